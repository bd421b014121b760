"""``tunekit space push | run``: publish the Gradio demo Space of a fine-tune, or serve it here.
Thin: arguments in, :mod:`tunekit.space` called, one line out."""

from __future__ import annotations

import argparse

from .common import check_port


def push(args: argparse.Namespace) -> int:
    """``tunekit space push``: :func:`tunekit.space.push_space`; prints the Space's URL."""
    from ..space import push_space

    space_id = args.space_id or f"{args.model.rstrip('/')}-demo"
    url = push_space(args.model, space_id, private=args.private, adapters=args.adapter or None,
                     examples=args.example or None, title=args.title)
    print(url)
    return 0


def run(args: argparse.Namespace) -> int:
    """``tunekit space run``: :func:`tunekit.space.run_space` until interrupted."""
    from ..space import run_space

    if args.port is not None:
        check_port(args.port, free_ok=False)  # no --port is how to let gradio pick
    server = run_space(args.model, host=args.host, port=args.port, share=args.share,
                       adapters=args.adapter or None, examples=args.example or None)
    # The URL on stdout, flushed: scripts (and tests) wait for this line.
    print(f"running at {server.url}" + (f" (public: {server.share_url})" if server.share_url else ""), flush=True)
    server.block()
    return 0


def register(sub) -> None:
    """Add the ``space`` command group to the top-level subparsers."""
    space = sub.add_parser("space", help="the Gradio demo Space of a fine-tune: push it or run it locally")
    space_sub = space.add_subparsers(dest="space_command", metavar="COMMAND", required=True)

    cmd = space_sub.add_parser("push", help="create/update a Space demoing a pushed adapter; link it from its card")
    cmd.add_argument("model", help="the adapter's Hub repo id (user/adapter)")
    cmd.add_argument("space_id", nargs="?", help="the Space to create (default: MODEL-demo)")
    cmd.add_argument("--private", action="store_true", help="create the Space private")
    cmd.add_argument("--title", help="the Space's title (default: '<adapter> demo')")
    _add_shared(cmd)
    cmd.set_defaults(func=push)

    cmd = space_sub.add_parser("run", help="serve the Space app on this machine (output folder, Hub id or spaces/ID)")
    cmd.add_argument("model", help="output folder, adapter Hub id, or spaces/user/name-demo for a pushed Space")
    cmd.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    cmd.add_argument("--port", type=int, default=None, help="TCP port (default: 7860 or the next free one)")
    cmd.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    _add_shared(cmd)
    cmd.set_defaults(func=run)


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", action="append", metavar="ID",
                        help="another adapter on the same base, for the adapter picker (repeatable)")
    parser.add_argument("--example", action="append", metavar="PROMPT",
                        help="example prompt (repeatable; default: the held-out rows' user turns)")
