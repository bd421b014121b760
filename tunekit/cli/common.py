"""What every ``tunekit`` command shares: argument types, flags generated from Python signatures,
the ``--config`` file, and the one place where errors become exit codes.

Argument types raise ``argparse.ArgumentTypeError`` (argparse prints usage, exit 2); checks that
need several arguments raise :class:`~tunekit.errors.ConfigError` inside the command (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from .. import config
from ..errors import ConfigError, TunekitError

# The one TCP port range; 0 is only accepted where the server then picks a free port itself.
PORT_MAX = 65535


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) as a bool (:func:`config.parse_bool`)."""
    try:
        return config.parse_bool(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction_or_count(text: str) -> float | int:
    """``eval_split`` and friends: ``0.1`` is a fraction, ``5`` a row count."""
    return int(text) if text.isdigit() else float(text)


def size(text: str) -> int:
    """A size flag (``24GB``, ``16GiB``) in bytes, through :func:`tunekit.units.parse_size`."""
    from ..units import parse_size

    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def check_port(port: int, *, free_ok: bool) -> None:
    """Refuse a number that is not a TCP port.

    Args:
        port: the ``--port`` value.
        free_ok: 0 is allowed, meaning "pick a free port" (``tunekit serve``).

    Raises:
        ConfigError: out of range.
    """
    low = 0 if free_ok else 1
    if not low <= port <= PORT_MAX:
        hint = "; 0 picks a free one" if free_ok else ""
        raise ConfigError(f"--port {port} is not a TCP port ({low}-{PORT_MAX}{hint})")


def arg_type(annotation: Any) -> Callable[[str], Any]:
    """The argparse type for a parameter annotated ``int``, ``float | None``, ``bool``…; str otherwise."""
    base = str(annotation).replace(" | None", "")
    return {"int": int, "float": float, "bool": parse_bool, "str": str}.get(base, str)


class Renamed(argparse.Action):
    """Store the value; when the flag was spelt with a deprecated alias, say so on stderr.

    Use ``parser.add_argument("--new", "--old", action=Renamed, deprecated=("--old",), ...)``.
    """

    def __init__(self, option_strings, dest, deprecated: tuple[str, ...] = (), **kwargs):
        self.deprecated = tuple(deprecated)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            print(f"warning: {option_string} is deprecated; use {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_flag(parser: argparse.ArgumentParser, name: str, annotation: Any, help: str, *,
             aliases: tuple[str, ...] = (), **kwargs: Any) -> argparse.Action:
    """One ``--flag`` for a Python parameter ``name`` (underscores become dashes), default ``None``
    so only what the user typed is passed on and the Python signature stays the one source of
    defaults. ``aliases`` are deprecated spellings that still work, with a warning."""
    kind = kwargs.pop("type", None) or arg_type(annotation)
    kwargs = {"dest": name, "default": None, "help": help, **kwargs}
    if kind is parse_bool:
        kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
    else:
        kwargs["type"] = kind
    flags = ["--" + name.replace("_", "-"), *aliases]
    if aliases:
        kwargs.update(action=Renamed, deprecated=tuple(aliases))
    return parser.add_argument(*flags, **kwargs)


def add_option_flags(parser: argparse.ArgumentParser, *, hidden: Collection[str] = (),
                     help: Mapping[str, str] | None = None) -> None:
    """One ``--flag`` per field of :class:`tunekit.options.Options`, with its help and default.

    Args:
        parser: the command's parser.
        hidden: options whose flags still parse but are left out of ``--help``.
        help: help text replacing the option's own, by option name.
    """
    from ..options import option_fields

    for f in option_fields():
        if not f.metadata.get("cli", True):
            continue
        kwargs: dict[str, Any] = {}
        if f.name == "eval_split":
            kwargs["type"] = fraction_or_count
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        text = (help or {}).get(f.name) or f"{f.metadata['help']} (default: {f.default})"
        add_flag(parser, f.name, f.type, argparse.SUPPRESS if f.name in hidden else text, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--training-arg KEY=VALUE``, read by :func:`options_from`."""
    parser.add_argument("--config", help="YAML file of options (and `data:`); flags override it")
    parser.add_argument("--training-arg", action="append", metavar="KEY=VALUE",
                        help="extra trl.SFTConfig argument (JSON value), repeatable")


def options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The Options keywords the user gave: ``--config`` first, then typed flags, then
    ``--training-arg``. ``data:`` from the config file is kept (see :func:`pop_data`)."""
    from ..options import option_fields

    options: dict[str, Any] = {}
    if getattr(args, "config", None):
        options.update(read_config(args.config))
    for f in option_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            options[f.name] = value
    for item in getattr(args, "training_arg", None) or []:
        key, sep, raw = item.partition("=")
        if not key or not sep:
            raise ConfigError(f"--training-arg takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault("training_args", {})[key] = value
    return options


def pop_data(args: argparse.Namespace, options: dict[str, Any], command: str) -> Any:
    """The DATA argument, or ``data:`` from ``--config`` (removed from ``options`` either way)."""
    config_data = options.pop("data", None)
    data = args.data or config_data
    if data is None:
        raise ConfigError(f"give the training data: `tunekit {command} DATA` or `data:` in --config")
    return data


def read_config(path: str) -> dict[str, Any]:
    """The mapping in a ``--config`` YAML file.

    Raises:
        ConfigError: missing file, invalid YAML, or not a mapping.
    """
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return loaded


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command: a ``TunekitError`` becomes one ``error:`` line on stderr and exit 1
    (the traceback too under ``TUNEKIT_DEBUG=1``); Ctrl-C exits 130."""
    try:
        return int(func(args) or 0)
    except TunekitError as e:
        if config.debug():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
