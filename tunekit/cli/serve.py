"""``tunekit serve`` (OpenAI-compatible server), ``tunekit merge`` and ``tunekit export``: a
fine-tune put to use outside tunekit. Thin: arguments in, the Python API called, one line out."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import check_port, size


def serve(args: argparse.Namespace) -> int:
    """``tunekit serve``: :func:`tunekit.server.serve` until interrupted."""
    check_port(args.port, free_ok=True)
    if args.max_loaded is not None and args.max_loaded < 1:
        raise ConfigError(f"--max-loaded must be at least 1, got {args.max_loaded}")
    if args.max_body < 1:
        raise ConfigError(f"--max-body must be at least 1 byte, got {args.max_body}")
    from ..server import serve as serve_fn

    def ready(url: str) -> None:
        # The URL on stdout, flushed: scripts (and tests) wait for this line.
        print(f"serving {args.base or 'the embedded SmolLM2-135M-Instruct'} with {len(args.adapter or [])} "
              f"adapter(s) at {url}", flush=True)

    serve_fn(args.base, args.adapter or [], host=args.host, port=args.port, max_loaded=args.max_loaded,
             device=args.device, allow_any=args.allow_any, api_key=args.api_key, max_body=args.max_body, ready=ready)
    return 0


def merge(args: argparse.Namespace) -> int:
    """``tunekit merge``: ``load(MODEL).merge(OUT_DIR)``."""
    from ..result import load

    out = load(args.model, revision=args.revision, base=args.base).merge(args.out_dir, dtype=args.dtype)
    print(f"merged model written to {out}")
    return 0


def export(args: argparse.Namespace) -> int:
    """``tunekit export``: ``load(MODEL).export_gguf(FILE)``."""
    from ..result import load

    result = load(args.model, revision=args.revision, base=args.base)
    name = args.model.rstrip("/").split("/")[-1]
    path = args.output or f"{name}.{args.dtype}.gguf"
    out = result.export_gguf(path, dtype=args.dtype)
    print(f"GGUF written to {out}")
    return 0


def register(sub) -> None:
    """Add the ``serve``, ``merge`` and ``export`` commands to the top-level subparsers."""
    cmd = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server: one base, many adapters picked by `model`",
        description="Serve a base and LoRA adapters over the OpenAI API (/v1/models, /v1/chat/completions). "
                    "The request's `model` picks the adapter; the base's own name answers with the base alone.")
    cmd.add_argument("--base", help="base model: Hub id or folder (default: the embedded SmolLM2-135M-Instruct)")
    cmd.add_argument("--adapter", action="append", metavar="ID",
                     help="adapter Hub id (user/name) or folder to serve, pulled on first use (repeatable)")
    cmd.add_argument("--max-loaded", type=int, default=None, metavar="N",
                     help="adapters kept in memory at once; the least recently used is evicted (default: all)")
    cmd.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on (default: 127.0.0.1); any other prints a warning, as the "
                          "server speaks plain HTTP")
    cmd.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    cmd.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    cmd.add_argument("--allow-any", action="store_true",
                     help="also serve adapters not listed, pulled by Hub id (user/name) when a request asks for "
                          "them; local folders are served only when listed with --adapter")
    cmd.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request, /health included")
    cmd.add_argument("--max-body", type=size, default="8MiB", metavar="SIZE",
                     help="largest request body, e.g. 8MiB or 500kB; larger ones get 413 (default: 8MiB)")
    cmd.set_defaults(func=serve)

    cmd = sub.add_parser("merge", help="merge an adapter into its base: a plain transformers model folder")
    cmd.add_argument("model", help="adapter output folder or Hub repo id")
    cmd.add_argument("out_dir", help="new folder for the merged model")
    cmd.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="weights dtype (default: the base's own)")
    _add_source_flags(cmd)
    cmd.set_defaults(func=merge)

    cmd = sub.add_parser("export", help="export a fine-tune (merged) as one GGUF file for llama.cpp")
    cmd.add_argument("model", help="output folder or Hub repo id (adapter or full fine-tune)")
    cmd.add_argument("--format", choices=("gguf",), default="gguf", help="file format (default: gguf)")
    cmd.add_argument("-o", "--output", help="file to write (default: <name>.<dtype>.gguf here)")
    cmd.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="weight type (default: f16)")
    _add_source_flags(cmd)
    cmd.set_defaults(func=export)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--base", help="merge over this base (Hub id or folder) instead of the one the adapter names")
