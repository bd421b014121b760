"""``tunekit serve`` (OpenAI-compatible server), ``tunekit merge``, ``tunekit export`` and the
``--nproc`` flag of ``tunekit train``. Thin: arguments in, the Python API called, one line out."""

from __future__ import annotations

import argparse

from .errors import ConfigError


def _serve(args: argparse.Namespace) -> int:
    from .openai_server import serve

    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.max_loaded is not None and args.max_loaded < 1:
        raise ConfigError(f"--max-loaded must be at least 1, got {args.max_loaded}")

    def ready(url: str) -> None:
        # The URL on stdout, flushed: scripts (and tests) wait for this line.
        print(f"serving {args.base or 'the embedded SmolLM2-135M-Instruct'} with {len(args.adapter or [])} "
              f"adapter(s) at {url}", flush=True)

    serve(args.base, args.adapter or [], host=args.host, port=args.port, max_loaded=args.max_loaded,
          device=args.device, allow_any=args.allow_any, api_key=args.api_key, ready=ready)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .result import load

    out = load(args.model, revision=args.revision, base=args.base).merge(args.out_dir, dtype=args.dtype)
    print(f"merged model written to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .result import load

    result = load(args.model, revision=args.revision, base=args.base)
    name = args.model.rstrip("/").split("/")[-1]
    path = args.output or f"{name}.{args.dtype}.gguf"
    out = result.export_gguf(path, dtype=args.dtype)
    print(f"GGUF written to {out}")
    return 0


def register(sub) -> None:
    """Add the ``serve``, ``merge`` and ``export`` commands to the top-level subparsers."""
    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server: one base, many adapters picked by `model`",
        description="Serve a base and LoRA adapters over the OpenAI API (/v1/models, /v1/chat/completions). "
                    "The request's `model` picks the adapter; the base's own name answers with the base alone.")
    serve.add_argument("--base", help="base model: Hub id or folder (default: the embedded SmolLM2-135M-Instruct)")
    serve.add_argument("--adapter", action="append", metavar="ID",
                       help="adapter Hub id (user/name) or folder to serve, pulled on first use (repeatable)")
    serve.add_argument("--max-loaded", type=int, default=None, metavar="N",
                       help="adapters kept in memory at once; the least recently used is evicted (default: all)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    serve.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    serve.add_argument("--allow-any", action="store_true",
                       help="also serve adapters not listed, pulled by name when a request asks for them")
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 requests")
    serve.set_defaults(func=_serve)

    merge = sub.add_parser("merge", help="merge an adapter into its base: a plain transformers model folder")
    merge.add_argument("model", help="adapter output folder or Hub repo id")
    merge.add_argument("out_dir", help="new folder for the merged model")
    merge.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="weights dtype (default: the base's own)")
    _add_source_flags(merge)
    merge.set_defaults(func=_merge)

    export = sub.add_parser("export", help="export a fine-tune (merged) as one GGUF file for llama.cpp")
    export.add_argument("model", help="output folder or Hub repo id (adapter or full fine-tune)")
    export.add_argument("--format", choices=("gguf",), default="gguf", help="file format (default: gguf)")
    export.add_argument("-o", "--output", help="file to write (default: <name>.<dtype>.gguf here)")
    export.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="weight type (default: f16)")
    _add_source_flags(export)
    export.set_defaults(func=_export)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--base", help="merge over this base (Hub id or folder) instead of the one the adapter names")


# -- tunekit train --nproc -------------------------------------------------------------------------
def add_train_flags(train: argparse.ArgumentParser) -> None:
    """The multi-process flags of ``tunekit train``."""
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train data-parallel in N processes (GPUs, or CPU processes with gloo) via accelerate")
    train.add_argument("--accelerate-config", metavar="YAML",
                       help="accelerate config for --nproc, e.g. examples/accelerate/fsdp.yaml or "
                            "deepspeed_zero3.yaml (default: plain data parallelism)")


def maybe_launch(args: argparse.Namespace, data, options: dict) -> int | None:
    """Relaunch ``tunekit train`` in ``--nproc`` processes; None when this process should train
    itself (one process, or already a launched worker)."""
    from .launch import in_distributed_run, launch_train

    nproc = getattr(args, "nproc", 1) or 1
    config_file = getattr(args, "accelerate_config", None)
    if in_distributed_run() or (nproc == 1 and not config_file):
        return None
    return launch_train(data, options, nproc=nproc, config_file=config_file, verbose=getattr(args, "verbose", False))
