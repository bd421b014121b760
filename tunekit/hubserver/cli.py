"""``tunekit hub …`` commands: ``serve``, ``user add`` and ``org add``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"5GiB"``, ``"500M"``, ``"1024"`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(
            f"Invalid size {text!r}: use a number with an optional unit, e.g. 5GiB or 500M"
        )
    unit = (match.group(2) or "").upper()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


def _default_data_dir() -> Path:
    from .. import config

    return config.home() / "hub"


def _add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the hub's data folder (default: $TUNEKIT_HOME/hub)",
    )


def _serve(args: argparse.Namespace) -> int:
    from . import serve
    from .settings import HubSettings

    data_dir = args.data or _default_data_dir()
    settings = HubSettings(
        data_dir=data_dir,
        max_file_bytes=parse_size(args.max_file_size),
        public_url=args.public_url,
    )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (1-65535)")
    serve(
        data_dir,
        host=args.host,
        port=args.port,
        settings=settings,
        log_level="info" if args.verbose else "warning",
    )
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from . import add_user

    print(add_user(args.data or _default_data_dir(), args.name))
    return 0


def _org_add(args: argparse.Namespace) -> int:
    from . import add_org

    add_org(args.data or _default_data_dir(), args.name, args.member)
    return 0


def register(sub) -> None:
    """Add the ``hub`` command group to the top-level subparsers."""
    hub = sub.add_parser("hub", help="run a self-hosted Hugging Face Hub-compatible server")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)

    serve = hub_sub.add_parser(
        "serve", help="serve a hub (point clients at it with HF_ENDPOINT=http://HOST:PORT)"
    )
    _add_data_arg(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    serve.add_argument(
        "--max-file-size", default="5GiB", help="largest file accepted (default: 5GiB)"
    )
    serve.add_argument(
        "--public-url",
        default=None,
        help="base URL clients use, when behind a proxy (default: the URL of each request)",
    )
    serve.set_defaults(func=_serve)

    user = hub_sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    user_add = user_sub.add_parser(
        "add", help="create a user (if new) and print a new token for it"
    )
    user_add.add_argument("name", help="user name")
    _add_data_arg(user_add)
    user_add.set_defaults(func=_user_add)

    org = hub_sub.add_parser("org", help="manage organizations")
    org_sub = org.add_subparsers(dest="org_command", metavar="COMMAND", required=True)
    org_add = org_sub.add_parser("add", help="create an organization (if new) and add members")
    org_add.add_argument("name", help="organization name")
    org_add.add_argument("--member", action="append", default=[], help="user to add (repeatable)")
    _add_data_arg(org_add)
    org_add.set_defaults(func=_org_add)
