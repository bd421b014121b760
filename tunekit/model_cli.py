"""``tunekit estimate | compare | push | pull``: the commands about one model's cost and its trip
to and from the Hub. Thin, like ``cli.py``: arguments in, the Python API called, its result out.

Each command mirrors one function: ``estimate`` → :func:`tunekit.estimate` (flags named after
its keywords, defaults read from its signature), ``compare`` → :func:`tunekit.compare` (plus
every ``tunekit train`` flag, as ``compare(**options)`` takes every ``finetune`` option),
``push`` → ``TuneResult.push``, ``pull`` → :func:`tunekit.load`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(text: str) -> int:
    """``24GB``, ``80G``, ``16GiB``, ``2.5e10``: bytes (decimal units, like the estimate's table)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 24GB, 80G or 16GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


# -- estimate ----------------------------------------------------------------------------------
# tunekit.estimate's keywords and their help; a test checks every keyword has its flag.
_ESTIMATE_FLAGS = {
    "seq_len": (int, "tokens per sequence (after padding/packing)"),
    "batch_size": (int, "sequences per micro-batch"),
    "grad_accum": (int, "gradient-accumulation steps"),
    "r": (int, "LoRA rank"),
    "target_modules": (str, "LoRA targets: all-linear, or comma-separated names such as q_proj,v_proj"),
    "lora_dropout": (float, "LoRA dropout (above 0 each adapter keeps a dropped copy of its input)"),
    "optimizer": (str, "adamw, paged_adamw, adamw_8bit, paged_adamw_8bit or sgd"),
    "dtype": (str, "compute dtype: fp32, bf16 or fp16; default: bf16 on CUDA, fp32 on CPU"),
    "device": (str, "cpu or cuda[:N]; a GPU this machine lacks can be planned for; default: this machine's"),
    "gradient_checkpointing": ("bool", "recompute activations to save memory; default: on for CUDA, off on CPU"),
    "tokens_per_epoch": (int, "trained tokens per epoch, for the time per epoch; default: no time estimate"),
    "flops": (float, "the device's matmul FLOP/s; default: measured on this machine"),
}


def _estimate(args: argparse.Namespace) -> int:
    from .errors import ResourceError
    from .estimate import _fmt_bytes, choose_method, comparison_table, estimate, free_memory

    kw = {name: getattr(args, name) for name in _ESTIMATE_FLAGS if getattr(args, name) is not None}
    if "target_modules" in kw and kw["target_modules"] != "all-linear":
        kw["target_modules"] = [m.strip() for m in kw["target_modules"].split(",") if m.strip()]
    base = _base_for_estimate(args.base)
    methods = ["full", "lora", "qlora"] if args.method == "all" else [args.method]
    ests = {m: estimate(base, m, **kw) for m in methods}

    free, choice = args.free, None
    if free is None:
        try:
            free = free_memory(kw.get("device"))
        except ResourceError:
            free = None  # planning for a GPU this machine does not have: no verdict without --free
    if free is not None and args.method == "all":
        try:
            method, reason, _ = choose_method(base, n_examples=args.n_examples, free_bytes=free, **kw)
            choice = {"method": method, "reason": reason}
        except ResourceError as e:
            choice = {"method": None, "reason": str(e).splitlines()[0]}

    if args.json:
        out = {m: e.to_dict() for m, e in ests.items()}
        if choice:
            out["auto"] = {**choice, "free_bytes": free, "n_examples": args.n_examples}
        print(json.dumps(out, indent=2))
        return 0
    if len(ests) == 1:
        print(next(iter(ests.values())).table())
        return 0
    first = next(iter(ests.values()))
    print(f"{first.base}: {first.params_total:,} parameters; {first.device} ({first.dtype}), "
          f"batch {first.batch_size} x {first.seq_len} tokens, grad. accum. {first.grad_accum}")
    print(comparison_table(ests))
    speed = [f"{m} {e.tokens_per_second:,.0f} tokens/s" + (f" ({_secs(e.seconds_per_epoch)}/epoch)"
                                                           if e.seconds_per_epoch else "")
             for m, e in ests.items() if e.tokens_per_second]
    if speed:
        print("  throughput: " + " · ".join(speed))
    if choice:
        verdict = f"method='auto' with {args.n_examples:,} examples and {_fmt_bytes(free)} free: "
        print(verdict + (choice["reason"] if choice["method"] else f"fails: {choice['reason']}"))
    elif args.free is None:
        print(f"(pass --free SIZE, e.g. --free 24GB, to see what method='auto' picks on {first.device})")
    return 0


def _secs(s: float) -> str:
    from .estimate import _fmt_seconds

    return _fmt_seconds(s)


def _base_for_estimate(base: str):
    """A folder, a config.json file, or a Hub id; ``embedded`` is tunekit's default base."""
    if base == "embedded":
        from .models import resolve_base

        return str(resolve_base(None).path)
    path = Path(base).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        # A bare config.json (e.g. copied from a model page): estimate() reads its folder.
        return str(path.parent)
    return base


# -- compare -----------------------------------------------------------------------------------
def _compare(args: argparse.Namespace) -> int:
    from .cli import _options_from
    from .compare import compare
    from .errors import ConfigError

    options = _options_from(args)
    data = args.data or options.pop("data", None)
    options.pop("data", None)
    if data is None:
        raise ConfigError("give the data: `tunekit compare DATA` or `data:` in --config")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = compare(data, methods=methods, steps=args.steps, metric=_metric(args.metric),
                     max_new_tokens=args.max_new_tokens, **options)
    print(result.markdown())
    print(f"wrote {result.markdown_path}, {result.json_path.name} and {result.png_path.name}")
    return 0


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the reply equals the reference (surrounding whitespace ignored), else 0.0."""
    return float(prediction.strip() == reference.strip())


def _metric(spec: str | None):
    """``exact``, or ``module:function`` / ``path/to/file.py:function`` naming a
    ``metric(prediction, reference) -> float``."""
    if spec is None:
        return None
    if spec == "exact":
        return exact_match
    import importlib
    import importlib.util

    from .errors import ConfigError

    module_name, _, func = spec.rpartition(":")
    if not module_name or not func:
        raise ConfigError(f"--metric takes 'exact' or MODULE:FUNCTION (or FILE.py:FUNCTION), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loaded is None or not Path(module_name).is_file():
                raise FileNotFoundError(module_name)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules of the current folder
            module = importlib.import_module(module_name)
        return getattr(module, func)
    except (ImportError, FileNotFoundError, AttributeError) as e:
        raise ConfigError(f"--metric {spec}: cannot load it ({type(e).__name__}: {e})") from e


# -- push / pull -------------------------------------------------------------------------------
def _push(args: argparse.Namespace) -> int:
    from .result import TuneResult

    result = TuneResult.from_dir(args.output_dir)
    print(result.push(args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message))
    return 0


def _pull(args: argparse.Namespace) -> int:
    import shutil

    from .errors import ConfigError
    from .result import load

    result = load(args.repo_id, revision=args.revision, token=args.token)
    folder = Path(result.output_dir)
    if args.to:
        target = Path(args.to).expanduser()
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"--to {target} already exists and is not empty; choose an empty or new folder")
        # The cache holds symlinks into its blob store; copy the files themselves.
        shutil.copytree(folder, target, dirs_exist_ok=True)
        folder = target
    # Only the folder on stdout, so scripts can use `DIR=$(tunekit pull user/name)`.
    print(folder)
    return 0


# -- registration ------------------------------------------------------------------------------
_ESTIMATE_EPILOG = """examples:
  tunekit estimate ./my-model                        a local folder (or its config.json)
  tunekit estimate docs/configs/llama-3-70b --device cuda --free 80GB
  tunekit estimate meta-llama/Meta-Llama-3-8B --method qlora --seq-len 2048
Only config.json is read; the model is counted on PyTorch's meta device, so nothing is loaded."""

_COMPARE_EPILOG = """examples:
  tunekit compare train.jsonl --steps 20 --metric exact
  tunekit compare train.jsonl --methods lora,qlora --eval-data heldout.jsonl --metric mymetrics:score
Each method trains in its own process, so its measured peak memory is its own."""


def register(sub) -> None:
    """Add ``estimate``, ``compare``, ``push`` and ``pull`` to the top-level subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    est = sub.add_parser(
        "estimate", help="memory (and speed) of full, LoRA and QLoRA fine-tuning of a model, from its config",
        description="Estimate peak memory per method — weights, gradients, optimizer states, activations, "
                    "overhead — and what method='auto' would choose. Mirrors tunekit.estimate().",
        epilog=_ESTIMATE_EPILOG, formatter_class=fmt)
    est.add_argument("base", help="model folder, its config.json, a Hub id, or 'embedded' (tunekit's default base)")
    est.add_argument("--method", choices=("all", "full", "lora", "qlora"), default="all",
                     help="one method's detailed breakdown, or all side by side (default: all)")
    from .estimate import estimate as estimate_fn

    defaults = {n: p.default for n, p in inspect.signature(estimate_fn).parameters.items()}
    from .cli import _bool

    for name, (kind, text) in _ESTIMATE_FLAGS.items():
        # Flags default to None so only what the user typed reaches estimate(), whose signature
        # stays the one source of defaults; None defaults are described in the text itself.
        shown = "" if defaults[name] is None else f" (default: {defaults[name]})"
        kwargs: dict = {"dest": name, "default": None, "help": text + shown}
        if kind == "bool":
            kwargs.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        else:
            kwargs["type"] = kind
        est.add_argument("--" + name.replace("_", "-"), **kwargs)
    est.add_argument("--free", type=_size, metavar="SIZE",
                     help="memory available (e.g. 24GB) for the method='auto' verdict; default: measured free "
                          "memory of --device")
    est.add_argument("--n-examples", type=int, default=1000,
                     help="training examples, for the method='auto' verdict (full needs 20,000+) (default: 1000)")
    est.add_argument("--json", action="store_true", help="print the estimates as JSON")
    est.set_defaults(func=_estimate)

    cmp = sub.add_parser(
        "compare", help="train full, LoRA and QLoRA on the same data and tabulate memory, speed, loss",
        description="Fine-tune with each method on the same rows, split and seed, then write a table "
                    "(compare.md, compare.json) and a chart (compare.png). Mirrors tunekit.compare(); every "
                    "`tunekit train` flag applies to each method.",
        epilog=_COMPARE_EPILOG, formatter_class=fmt)
    cmp.add_argument("data", nargs="?", help="training data: file, folder, Hub dataset id")
    cmp.add_argument("--methods", default="full,lora,qlora", help="comma-separated methods (default: full,lora,qlora)")
    cmp.add_argument("--steps", type=int, help="updates per method (default: train --epochs over the data)")
    cmp.add_argument("--metric", help="task metric over the eval rows: exact, MODULE:FUNCTION or FILE.py:FUNCTION, "
                                      "a function metric(prediction, reference) -> float")
    cmp.add_argument("--max-new-tokens", type=int, default=128, help="reply length when scoring --metric (default: 128)")
    cmp.add_argument("--config", help="YAML file of options (and `data:`); flags override it")
    cmp.add_argument("--training-arg", action="append", metavar="KEY=VALUE",
                     help="extra trl.SFTConfig argument (JSON value), repeatable")
    from .cli import add_option_flags
    from .compare import _OWNED

    add_option_flags(cmp)
    for action in cmp._actions:
        if action.dest in _OWNED and action.dest != "output_dir":
            action.help = argparse.SUPPRESS  # compare() decides these itself
        elif action.dest == "output_dir":
            action.help = "folder for the table, chart, rows and one run per method (default: runs/compare-<base>-<time>)"
    cmp.set_defaults(func=_compare)

    push = sub.add_parser("push", help="upload an output folder to a Hub repo (adapter, tokenizer, card) in one commit",
                          description="Push a run folder to the Hub. Mirrors TuneResult.from_dir(DIR).push(REPO_ID).")
    push.add_argument("output_dir", help="the run's output folder")
    push.add_argument("repo_id", help="user/name or org/name; created when missing")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its visibility)")
    push.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the saved login)")
    push.add_argument("--commit-message", help="message of the commit")
    push.set_defaults(func=_push)

    pull = sub.add_parser("pull", help="download a fine-tune from the Hub into the cache and print where",
                          description="Download an adapter or model repo (safetensors only) as tunekit.load() does, "
                                      "and print its folder.")
    pull.add_argument("repo_id", help="user/name")
    pull.add_argument("--revision", help="branch, tag or commit id")
    pull.add_argument("--token", help="Hub token for a private repo (default: HF_TOKEN or the saved login)")
    pull.add_argument("--to", metavar="DIR", help="also copy the files into this (new or empty) folder")
    pull.set_defaults(func=_pull)
