"""Compare full fine-tuning, LoRA and QLoRA on the embedded SmolLM2-135M-Instruct with the
show-notes examples, and write ``docs/compare.md`` (the table) and ``docs/compare.png`` (the chart).

The real docs (a few minutes on 2 quiet CPU cores: 48 rows x 1 epoch, 12 updates per method)::

    python benchmarks/compare_methods.py

A quick check that everything works (writes to a scratch folder, not docs/)::

    python benchmarks/compare_methods.py --rows 8 --steps 2 --eval-rows 2 --docs /tmp/compare-check

Each method is trained by ``tunekit.compare`` in its own process on the same rows, split and seed;
the task metric is ``exact_format``: the share of held-out episodes (phrasings never seen in
training) whose greedy reply has exactly the four-line show-notes format.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "data" / "shownotes.jsonl"
HELDOUT = REPO / "examples" / "data" / "shownotes_heldout.jsonl"

# The format examples/data/README.md specifies, line by line.
_FORMAT = re.compile(
    r"🎙️ \S.* — Ep\. \d+\n"
    r"Guest: \S.* \([^()\n]+\)\n"
    r"Topics: [^·\n]+ · [^·\n]+ · [^·\n]+\n"
    r"Takeaway: [A-Z].*\.",
)


def exact_format(prediction: str, reference: str) -> float:
    """1.0 when the reply is exactly four lines in the show-notes format, else 0.0."""
    return float(_FORMAT.fullmatch(prediction.strip()) is not None)


def _rows(path: Path, n: int) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()][:n]


def _machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {cores} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48, help="training rows from shownotes.jsonl (default: 48)")
    parser.add_argument("--eval-rows", type=int, default=12, help="held-out rows to score (default: all 12)")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per method (default: 1)")
    parser.add_argument("--steps", type=int, default=None, help="updates per method instead of --epochs")
    parser.add_argument("--batch-size", type=int, default=4)
    # 1, not tunekit's default 4: 48 rows then give 12 updates per method instead of 3.
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--methods", default="full,lora,qlora")
    parser.add_argument("--base", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length when scoring (default: 64)")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="where compare.md and compare.png go (default: docs/)")
    parser.add_argument("--work", default=None, help="folder for the runs (default: runs/compare-...)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import tunekit

    started = time.perf_counter()
    result = tunekit.compare(
        _rows(TRAIN, args.rows),
        eval_data=_rows(HELDOUT, args.eval_rows),
        base=args.base,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        metric=exact_format,
        max_new_tokens=args.max_new_tokens,
        output_dir=args.work,
        seed=42,
    )
    minutes = (time.perf_counter() - started) / 60

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.png_path, docs / "compare.png")
    command = " ".join(["python benchmarks/compare_methods.py", *argv])
    (docs / "compare.md").write_text(
        "# Full fine-tuning vs LoRA vs QLoRA, measured\n\n"
        f"`{command}` trains each method with `tunekit.compare` on the same {result.train_rows} show-notes "
        f"examples (`examples/data/shownotes.jsonl`) and scores it on {result.eval_rows} held-out episodes "
        "(`shownotes_heldout.jsonl`, phrasings never seen in training). Each method runs in its own process, "
        "so its measured peak memory is its own. `exact_format` is the share of held-out replies that have "
        "exactly the four-line show-notes format (greedy decoding). Every method uses its default learning "
        "rate (2e-5 full, 2e-4 LoRA/QLoRA) and tunekit's other defaults.\n\n"
        + result.markdown()
        + f"\n![Peak memory, speed, loss and exact_format per method](compare.png)\n\n"
        f"Machine: {_machine()}. The whole comparison took {minutes:.0f} min.\n"
    )
    print(result.markdown())
    print(f"wrote {docs / 'compare.md'} and {docs / 'compare.png'} (runs in {result.output_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
