"""The ``tunekit`` command line: a thin layer that parses arguments, calls the Python API and
turns ``TunekitError`` into one line on stderr and exit code 1 (traceback with TUNEKIT_DEBUG=1).

One module per command group, as in ``huggingface_hub.cli``: :mod:`.train` (train, preview,
templates, chat), :mod:`.model` (estimate, compare, push, pull), :mod:`.serve` (serve, merge,
export), :mod:`.space`, :mod:`.hub`; :mod:`.common` holds what they share. Flags that mirror a
Python function are generated from its signature, so the CLI and the API cannot drift.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tunekit`` parser with every command; building it imports no heavy library."""
    from . import hub, model, serve, space, train

    parser = argparse.ArgumentParser(
        prog="tunekit", description="Fine-tune open chat models (full, LoRA, QLoRA) and publish them on the Hub."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (train, hub, space, serve, model):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``tunekit ARGS``; returns the exit code (0, 1 for a tunekit error, 2 for bad usage).

    Example:
        >>> main(["templates"])  # doctest: +SKIP
    """
    from .common import run_command

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return run_command(args.func, args)
