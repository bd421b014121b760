"""``tunekit estimate | compare | push | pull``: one model's cost and its trip to and from the Hub.

Each command mirrors one function: ``estimate`` → :func:`tunekit.estimate` (one flag per keyword,
defaults read from its signature), ``compare`` → :func:`tunekit.compare` (plus every
``tunekit train`` flag, as ``compare(**options)`` takes every ``finetune`` option),
``push`` → ``TuneResult.push``, ``pull`` → :func:`tunekit.load`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from .common import add_config_flags, add_flag, add_option_flags, options_from, pop_data, size

# Help per tunekit.estimate keyword (its signature gives the names, types and defaults); a test
# checks the two match.
ESTIMATE_HELP = {
    "max_length": "tokens per sequence (after padding/packing)",
    "batch_size": "sequences per micro-batch",
    "grad_accum": "gradient-accumulation steps",
    "r": "LoRA rank",
    "target_modules": "LoRA targets: all-linear, or comma-separated names such as q_proj,v_proj",
    "dropout": "LoRA dropout (above 0 each adapter keeps a dropped copy of its input)",
    "optimizer": "adamw, paged_adamw, adamw_8bit, paged_adamw_8bit or sgd",
    "dtype": "compute dtype: fp32, bf16 or fp16; default: bf16 on CUDA, fp32 on CPU",
    "device": "cpu or cuda[:N]; a GPU this machine lacks can be planned for; default: this machine's",
    "gradient_checkpointing": "recompute activations to save memory; default: on for CUDA, off on CPU",
    "tokens_per_epoch": "trained tokens per epoch, for the time per epoch; default: no time estimate",
    "flops": "the device's matmul FLOP/s; default: measured on this machine",
    "objective": "sft, dpo or kto: DPO/KTO add a second sequence per row and the reference forward",
}
# Flags renamed to the finetune() vocabulary; the old spellings still work, with a warning.
ESTIMATE_ALIASES = {"max_length": ("--seq-len",), "dropout": ("--lora-dropout",)}


def estimate_keywords() -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of :func:`tunekit.estimate`: one flag each."""
    from ..estimate import estimate

    return {n: p for n, p in inspect.signature(estimate).parameters.items() if p.kind == p.KEYWORD_ONLY}


def estimate(args: argparse.Namespace) -> int:
    """``tunekit estimate``: the breakdown per method and, with all three, what ``auto`` picks."""
    from ..estimate import estimate as estimate_fn

    kw = {name: getattr(args, name) for name in estimate_keywords() if getattr(args, name) is not None}
    if "target_modules" in kw and kw["target_modules"] != "all-linear":
        kw["target_modules"] = [m.strip() for m in kw["target_modules"].split(",") if m.strip()]
    base = base_for_estimate(args.base)
    methods = ["full", "lora", "qlora"] if args.method == "all" else [args.method]
    ests = {m: estimate_fn(base, m, **kw) for m in methods}
    free = args.free if args.free is not None else _free_memory(kw.get("device"))
    choice = _auto_choice(base, args.n_examples, free, kw) if free is not None and args.method == "all" else None

    if args.json:
        out = {m: e.to_dict() for m, e in ests.items()}
        if choice:
            out["auto"] = {**choice, "free_bytes": free, "n_examples": args.n_examples}
        print(json.dumps(out, indent=2))
    elif len(ests) == 1:
        print(next(iter(ests.values())).table())
    else:
        _print_comparison(ests, choice, free, args)
    return 0


def _free_memory(device: str | None) -> int | None:
    from ..errors import ResourceError
    from ..estimate import free_memory

    try:
        return free_memory(device)
    except ResourceError:
        return None  # planning for a GPU this machine does not have: no verdict without --free


def _auto_choice(base, n_examples: int, free: int, kw: dict) -> dict:
    from ..errors import ResourceError
    from ..estimate import choose_method

    try:
        method, reason, _ = choose_method(base, n_examples=n_examples, free_bytes=free, **kw)
        return {"method": method, "reason": reason}
    except ResourceError as e:
        return {"method": None, "reason": str(e).splitlines()[0]}


def _print_comparison(ests: dict, choice: dict | None, free: int | None, args: argparse.Namespace) -> None:
    """What was estimated, the methods side by side, their throughput and auto's verdict."""
    from ..estimate import comparison_table
    from ..units import format_bytes, format_seconds

    first = next(iter(ests.values()))
    print(f"{first.base}: {first.params_total:,} parameters; {first.device} ({first.dtype}), "
          f"batch {first.batch_size} x {first.seq_len} tokens, grad. accum. {first.grad_accum}")
    print(comparison_table(ests))
    speed = [f"{m} {e.tokens_per_second:,.0f} tokens/s"
             + (f" ({format_seconds(e.seconds_per_epoch)}/epoch)" if e.seconds_per_epoch else "")
             for m, e in ests.items() if e.tokens_per_second]
    if speed:
        print("  throughput: " + " · ".join(speed))
    if choice:
        verdict = f"method='auto' with {args.n_examples:,} examples and {format_bytes(free)} free: "
        print(verdict + (choice["reason"] if choice["method"] else f"fails: {choice['reason']}"))
    elif args.free is None:
        print(f"(pass --free SIZE, e.g. --free 24GB, to see what method='auto' picks on {first.device})")


def base_for_estimate(base: str) -> str:
    """A folder, a config.json file, or a Hub id; ``embedded`` is tunekit's default base."""
    if base == "embedded":
        from ..models import resolve_base

        return str(resolve_base(None).path)
    path = Path(base).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        # A bare config.json (e.g. copied from a model page): estimate() reads its folder.
        return str(path.parent)
    return base


# -- compare -----------------------------------------------------------------------------------
def compare(args: argparse.Namespace) -> int:
    """``tunekit compare``: :func:`tunekit.compare`, then its table and the files it wrote."""
    from ..compare import compare as compare_fn

    options = options_from(args)
    data = pop_data(args, options, "compare")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = compare_fn(data, methods=methods, steps=args.steps, metric=load_metric(args.metric),
                        max_new_tokens=args.max_new_tokens, **options)
    print(result.markdown())
    print(f"wrote {result.markdown_path}, {result.json_path.name} and {result.png_path.name}")
    return 0


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the reply equals the reference (surrounding whitespace ignored), else 0.0."""
    return float(prediction.strip() == reference.strip())


def load_metric(spec: str | None):
    """The ``--metric`` function: ``exact``, or ``module:function`` / ``path/to/file.py:function``
    naming a ``metric(prediction, reference) -> float``.

    Raises:
        ConfigError: malformed, or the module, file or function cannot be loaded.
    """
    if spec is None:
        return None
    if spec == "exact":
        return exact_match
    import importlib
    import importlib.util

    from ..errors import ConfigError

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
def push(args: argparse.Namespace) -> int:
    """``tunekit push``: ``TuneResult.from_dir(DIR).push(REPO_ID)``; prints the repo URL."""
    from ..result import TuneResult

    result = TuneResult.from_dir(args.output_dir)
    print(result.push(args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message))
    return 0


def pull(args: argparse.Namespace) -> int:
    """``tunekit pull``: :func:`tunekit.load` into the cache (and ``--output-dir``); prints the folder."""
    import shutil

    from ..errors import ConfigError
    from ..result import load

    result = load(args.repo_id, revision=args.revision, token=args.token)
    folder = Path(result.output_dir)
    if args.output_dir:
        target = Path(args.output_dir).expanduser()
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"--output-dir {target} already exists and is not empty; "
                              "choose an empty or new folder")
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
  tunekit estimate meta-llama/Meta-Llama-3-8B --method qlora --max-length 2048
Only config.json is read; the model is counted on PyTorch's meta device, so nothing is loaded.
Sizes: 80GB is 80*10^9 bytes, 80GiB is 80*2^30; a bare 80G is refused as ambiguous."""

_COMPARE_EPILOG = """examples:
  tunekit compare train.jsonl --steps 20 --metric exact
  tunekit compare train.jsonl --methods lora,qlora --eval-data heldout.jsonl --metric mymetrics:score
Each method trains in its own process, so its measured peak memory is its own."""


def register(sub) -> None:
    """Add ``estimate``, ``compare``, ``push`` and ``pull`` to the top-level subparsers."""
    _register_estimate(sub)
    _register_compare(sub)

    cmd = sub.add_parser("push", help="upload an output folder to a Hub repo (adapter, tokenizer, card) in one commit",
                         description="Push a run folder to the Hub. Mirrors TuneResult.from_dir(DIR).push(REPO_ID).")
    cmd.add_argument("output_dir", help="the run's output folder")
    cmd.add_argument("repo_id", help="user/name or org/name; created when missing")
    cmd.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its visibility)")
    cmd.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the saved login)")
    cmd.add_argument("--commit-message", help="message of the commit")
    cmd.set_defaults(func=push)

    cmd = sub.add_parser("pull", help="download a fine-tune from the Hub into the cache and print where",
                         description="Download an adapter or model repo (safetensors only) as tunekit.load() does, "
                                     "and print its folder.")
    cmd.add_argument("repo_id", help="user/name")
    cmd.add_argument("--revision", help="branch, tag or commit id")
    cmd.add_argument("--token", help="Hub token for a private repo (default: HF_TOKEN or the saved login)")
    add_flag(cmd, "output_dir", "str", "also copy the files into this (new or empty) folder "
                                       "(--to is its deprecated name)", aliases=("--to",), metavar="DIR")
    cmd.set_defaults(func=pull)


def _register_estimate(sub) -> None:
    cmd = sub.add_parser(
        "estimate", help="memory (and speed) of full, LoRA and QLoRA fine-tuning of a model, from its config",
        description="Estimate peak memory per method — weights, gradients, optimizer states, activations, "
                    "overhead — and what method='auto' would choose. Mirrors tunekit.estimate().",
        epilog=_ESTIMATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("base", help="model folder, its config.json, a Hub id, or 'embedded' (tunekit's default base)")
    cmd.add_argument("--method", choices=("all", "full", "lora", "qlora"), default="all",
                     help="one method's detailed breakdown, or all side by side (default: all)")
    for name, p in estimate_keywords().items():
        # None defaults are described in the help text itself.
        shown = "" if p.default is None else f" (default: {p.default})"
        aliases = ESTIMATE_ALIASES.get(name, ())
        renamed = f"; {', '.join(aliases)} is its deprecated name" if aliases else ""
        add_flag(cmd, name, p.annotation, ESTIMATE_HELP.get(name, name) + renamed + shown, aliases=aliases)
    cmd.add_argument("--free", type=size, metavar="SIZE",
                     help="memory available (e.g. 24GB or 22GiB) for the method='auto' verdict; default: "
                          "measured free memory of --device")
    cmd.add_argument("--n-examples", type=int, default=1000,
                     help="training examples, for the method='auto' verdict (full needs 20,000+) (default: 1000)")
    cmd.add_argument("--json", action="store_true", help="print the estimates as JSON")
    cmd.set_defaults(func=estimate)


def _register_compare(sub) -> None:
    from ..compare import OWNED_OPTIONS

    cmd = sub.add_parser(
        "compare", help="train full, LoRA and QLoRA on the same data and tabulate memory, speed, loss",
        description="Fine-tune with each method on the same rows, split and seed, then write a table "
                    "(compare.md, compare.json) and a chart (compare.png). Mirrors tunekit.compare(); every "
                    "`tunekit train` flag applies to each method.",
        epilog=_COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("data", nargs="?", help="training data: file, folder, Hub dataset id")
    cmd.add_argument("--methods", default="full,lora,qlora", help="comma-separated methods (default: full,lora,qlora)")
    cmd.add_argument("--steps", type=int, help="updates per method (default: train --epochs over the data)")
    cmd.add_argument("--metric", help="task metric over the eval rows: exact, MODULE:FUNCTION or FILE.py:FUNCTION, "
                                      "a function metric(prediction, reference) -> float")
    cmd.add_argument("--max-new-tokens", type=int, default=128, help="reply length when scoring --metric (default: 128)")
    add_config_flags(cmd)
    # compare() decides these itself (one method per run, no pushing): accepted, so compare()
    # can say so, but not advertised.
    add_option_flags(cmd, hidden=set(OWNED_OPTIONS) - {"output_dir"}, help={
        "output_dir": "folder for the table, chart, rows and one run per method "
                      "(default: runs/compare-<base>-<time>)"})
    cmd.set_defaults(func=compare)
