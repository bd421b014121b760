"""The ``tunekit`` command line: a thin layer that parses arguments, calls the Python API and
turns ``TunekitError`` into one line on stderr and exit code 1 (traceback with TUNEKIT_DEBUG=1)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from . import config
from .errors import TunekitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunekit", description="Fine-tune open chat models and publish them on the Hub."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each stage registers its own commands; the imports stay light (heavy ones happen in the
    # command functions), so `tunekit --help` is fast.
    from .hubserver import cli as hub_cli

    hub_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except TunekitError as e:
        if config.debug():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
