"""``tunekit hub serve | user add|remove | token list|revoke|rotate | org add|remove-member``: run
tunekit's own Hub-compatible server (:mod:`tunekit.hubserver`) and manage its users, tokens and
organizations. Account changes take effect at once, also while the server runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import check_port, size


def data_dir(args: argparse.Namespace) -> Path:
    """``--data``, or the hub under ``$TUNEKIT_HOME``."""
    from .. import config

    return args.data or config.home() / "hub"


def serve(args: argparse.Namespace) -> int:
    """``tunekit hub serve``: :func:`tunekit.hubserver.serve` until interrupted."""
    # Not 0: the hub's URL is what clients are given, so its port must be known in advance.
    check_port(args.port, free_ok=False)
    from ..hubserver import HubSettings
    from ..hubserver import serve as serve_fn

    from ..hubserver import client_hint

    folder = data_dir(args)
    settings = HubSettings(data_dir=folder, max_file_bytes=args.max_file_size, public_url=args.public_url)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(client_hint(args.public_url or f"http://{host}:{args.port}"), file=sys.stderr, flush=True)
    serve_fn(folder, host=args.host, port=args.port, settings=settings,
             log_level="info" if args.verbose else "warning")
    return 0


def user_add(args: argparse.Namespace) -> int:
    """``tunekit hub user add``: prints a new token (the user's earlier tokens stay valid)."""
    from ..hubserver import add_user

    print(add_user(data_dir(args), args.name))
    return 0


def user_remove(args: argparse.Namespace) -> int:
    """``tunekit hub user remove``: the user's tokens stop working at once."""
    from ..hubserver import remove_user

    for repo_id in remove_user(data_dir(args), args.name, delete_repos=args.delete_repos):
        print(f"deleted {repo_id}")
    print(f"removed user {args.name}")
    return 0


def token_list(args: argparse.Namespace) -> int:
    """``tunekit hub token list``: ids and creation dates, never the tokens."""
    from ..hubserver import list_tokens

    for token_id, created in list_tokens(data_dir(args), args.user):
        print(f"{token_id}  {created}")
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    """``tunekit hub token revoke``: by id, or the token itself read from stdin (``-``), so it
    does not land in the shell history."""
    from ..hubserver import revoke_token

    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    user = revoke_token(data_dir(args), token)
    print(f"revoked a token of {user}")
    return 0


def token_rotate(args: argparse.Namespace) -> int:
    """``tunekit hub token rotate``: revokes all of the user's tokens, prints the new one."""
    from ..hubserver import rotate_token

    print(rotate_token(data_dir(args), args.user))
    return 0


def org_remove_member(args: argparse.Namespace) -> int:
    """``tunekit hub org remove-member``."""
    from ..hubserver import remove_member

    for user in args.user:
        remove_member(data_dir(args), args.name, user)
    return 0


def org_add(args: argparse.Namespace) -> int:
    """``tunekit hub org add``."""
    from ..hubserver import add_org

    add_org(data_dir(args), args.name, args.member)
    return 0


def register(sub) -> None:
    """Add the ``hub`` command group to the top-level subparsers."""
    hub = sub.add_parser("hub", help="run a self-hosted Hugging Face Hub-compatible server")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)

    cmd = hub_sub.add_parser("serve", help="serve a hub (point clients at it with HF_ENDPOINT=http://HOST:PORT)")
    _add_data_arg(cmd)
    cmd.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    cmd.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    cmd.add_argument("--max-file-size", type=size, default="5GiB", metavar="SIZE",
                     help="largest file accepted, e.g. 5GiB (5*2^30 bytes) or 5GB (5*10^9) (default: 5GiB)")
    cmd.add_argument("--public-url", default=None,
                     help="base URL clients use, e.g. the https:// URL of a TLS proxy in front of the hub"
                          " (default: the address each connection arrived on)")
    # SUPPRESS: given before the command (`tunekit -v hub serve`) it must not be reset to False here.
    cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log every request")
    cmd.set_defaults(func=serve)

    user = hub_sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    cmd = user_sub.add_parser("add", help="create a user (if new) and print a new token for it")
    cmd.add_argument("name", help="user name")
    _add_data_arg(cmd)
    cmd.set_defaults(func=user_add)
    cmd = user_sub.add_parser("remove", help="remove a user; their tokens stop working at once")
    cmd.add_argument("name", help="user name")
    cmd.add_argument("--delete-repos", action="store_true",
                     help="also delete the user's repos (without it, a user who owns repos is kept)")
    _add_data_arg(cmd)
    cmd.set_defaults(func=user_remove)

    token = hub_sub.add_parser("token", help="list, revoke and rotate tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    cmd = token_sub.add_parser("list", help="a user's token ids and creation dates")
    cmd.add_argument("user", help="user name")
    _add_data_arg(cmd)
    cmd.set_defaults(func=token_list)
    cmd = token_sub.add_parser("revoke", help="revoke one token; it gets 401 from the next request on")
    cmd.add_argument("token", help="the token's id (from `token list`), or - to read the token from stdin")
    _add_data_arg(cmd)
    cmd.set_defaults(func=token_revoke)
    cmd = token_sub.add_parser("rotate", help="revoke all of a user's tokens and print a new one")
    cmd.add_argument("user", help="user name")
    _add_data_arg(cmd)
    cmd.set_defaults(func=token_rotate)

    org = hub_sub.add_parser("org", help="manage organizations")
    org_sub = org.add_subparsers(dest="org_command", metavar="COMMAND", required=True)
    cmd = org_sub.add_parser("add", help="create an organization (if new) and add members")
    cmd.add_argument("name", help="organization name")
    cmd.add_argument("--member", action="append", default=[], help="user to add (repeatable)")
    _add_data_arg(cmd)
    cmd.set_defaults(func=org_add)
    cmd = org_sub.add_parser("remove-member", help="take users out of an organization, effective at once")
    cmd.add_argument("name", help="organization name")
    cmd.add_argument("user", nargs="+", help="member to remove")
    _add_data_arg(cmd)
    cmd.set_defaults(func=org_remove_member)


def _add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="the hub's data folder (default: $TUNEKIT_HOME/hub)")
