"""``tunekit serve`` (OpenAI-compatible server), ``tunekit merge`` and ``tunekit export``: a
fine-tune put to use outside tunekit. Thin: arguments in, the Python API called, one line out."""

from __future__ import annotations

import argparse
import re

from ..errors import ConfigError
from .common import check_port, size


def serve(args: argparse.Namespace) -> int:
    """``tunekit serve``: :func:`tunekit.server.serve` until interrupted."""
    check_port(args.port, free_ok=True)
    if args.max_loaded is not None and args.max_loaded < 1:
        raise ConfigError(f"--max-loaded must be at least 1, got {args.max_loaded}")
    if args.max_body < 1:
        raise ConfigError(f"--max-body must be at least 1 byte, got {args.max_body}")
    if args.max_upload < 1:
        raise ConfigError(f"--max-upload must be at least 1 byte, got {args.max_upload}")
    if args.push_to is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", args.push_to):
        raise ConfigError(f"--push-to {args.push_to!r}: give a Hub user or organisation name (letters, digits, "
                          "'-', '_', '.'), e.g. --push-to my-org")
    from ..server import serve as serve_fn
    from ..server.vllm import parse_lora_module

    modules = [parse_lora_module(text) for text in args.lora_modules or []]
    for module in modules:
        if module.base_model_name and module.base_model_name != (args.base or module.base_model_name):
            raise ConfigError(f"--lora-modules {module.name}: made for base {module.base_model_name!r}, "
                              f"but this server's base is {args.base!r}")
    if args.print_vllm:
        return _print_vllm(args, modules)

    def ready(url: str) -> None:
        # The URL on stdout, flushed: scripts (and tests) wait for this line.
        print(f"serving {args.base or 'the embedded SmolLM2-135M-Instruct'} with {len(args.adapter or [])} "
              f"adapter(s) at {url}", flush=True)

    if args.jobs_concurrency < 1:
        raise ConfigError(f"--jobs-concurrency must be at least 1, got {args.jobs_concurrency}")
    from ..jobs.owners import read_keys_file

    keys = {key: None for key in args.api_key or []}  # owner named from the key
    if args.api_keys_file:
        keys.update(read_keys_file(args.api_keys_file))
    api_key = next(iter(keys)) if len(keys) == 1 and not args.api_keys_file else (keys or None)
    serve_fn(args.base, args.adapter or [], host=args.host, port=args.port, max_loaded=args.max_loaded,
             device=args.device, allow_any=args.allow_any, api_key=api_key, max_body=args.max_body,
             max_upload=args.max_upload, data=args.data, push_to=args.push_to,
             jobs_concurrency=args.jobs_concurrency, ready=ready,
             lora_modules={m.name: m.path for m in modules}, allow_runtime_lora=args.allow_runtime_lora,
             lora_root=args.lora_root, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
             batching=not args.no_batching)
    return 0


def _print_vllm(args: argparse.Namespace, modules) -> int:
    """``--print-vllm``: the ``vllm serve`` line for the same base and adapters on stdout; on
    stderr, each adapter left out (not in the form vLLM loads) and why. Exit 1 when any was."""
    import sys
    from pathlib import Path

    from ..hub import local_folder
    from ..server.vllm import LoraModule, command

    adapters = [LoraModule(a, a) for a in args.adapter or []] + list(modules)
    folders = {}
    for module in adapters:
        if Path(module.path).expanduser().is_dir():
            folders[module.name] = Path(module.path).expanduser()
        else:
            try:
                folders[module.name] = local_folder(module.path)[0]
            except Exception:  # noqa: BLE001 - the Hub may be out of reach; the line is still printed
                pass
    line, notes = command(args.base, adapters, folders=folders, host=args.host, port=args.port,
                          max_loaded=args.max_loaded, api_key=bool(args.api_key or args.api_keys_file))
    print(line)
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    return 1 if any(": left out:" in n for n in notes) else 0


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
                     help="adapter Hub id (user/name), folder or NAME=FOLDER to serve, pulled on first use "
                          "(repeatable); a folder is served under its name, never its path")
    cmd.add_argument("--no-batching", action="store_true",
                     help="answer one request at a time instead of batching concurrent ones into shared forwards")
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
    cmd.add_argument("--api-key", action="append", metavar="KEY",
                     help="require `Authorization: Bearer KEY` on every request, /health included; repeat it for "
                          "several keys, each its own tenant (its own files, fine-tuning jobs and models)")
    cmd.add_argument("--api-keys-file", metavar="FILE",
                     help="more keys, one per line: `KEY` or `OWNER KEY` (OWNER appears in fine-tuned model ids)")
    cmd.add_argument("--data", metavar="DIR",
                     help="folder for the Files and Fine-tuning Jobs API (default: $TUNEKIT_HOME/server)")
    cmd.add_argument("--jobs-concurrency", type=int, default=1, metavar="N",
                     help="fine-tuning jobs trained at once, each in its own process (default: 1)")
    cmd.add_argument("--lora-modules", nargs="+", action="extend", metavar="NAME=PATH",
                     help="adapters served under a name of their own, as vLLM takes them: name=path (path: Hub id "
                          "or folder) or JSON {\"name\": …, \"path\": …, \"base_model_name\": …}")
    cmd.add_argument("--allow-runtime-lora", action="store_true",
                     help="serve vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter (behind --api-key)")
    cmd.add_argument("--lora-root", metavar="DIR",
                     help="folder whose subfolders /v1/load_lora_adapter may load by path (default: Hub ids only)")
    cmd.add_argument("--print-vllm", action="store_true",
                     help="print the `vllm serve` command line for the same base and adapters, and exit")
    cmd.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (with --ssl-keyfile)")
    cmd.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    cmd.add_argument("--max-body", type=size, default="8MiB", metavar="SIZE",
                     help="largest request body, e.g. 8MiB or 500kB; larger ones get 413 (default: 8MiB)")
    cmd.add_argument("--max-upload", type=size, default="512MiB", metavar="SIZE",
                     help="largest file upload to /v1/files, spooled to disk as it arrives; larger ones get 413 "
                          "(default: 512MiB)")
    cmd.add_argument("--push-to", metavar="NAMESPACE",
                     help="push each succeeded fine-tuning job's model, with its model card, to this Hub user or "
                          "organisation (HF_ENDPOINT and HF_TOKEN from the environment; default: never push)")
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
