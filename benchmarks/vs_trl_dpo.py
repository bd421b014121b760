"""tunekit's DPO defaults against a plain TRL ``DPOTrainer`` + PEFT recipe, side by side in one run.

The plain recipe is what a user writes without tunekit: TRL ``DPOTrainer`` on the same pairs as
conversational ``prompt`` / ``chosen`` / ``rejected`` rows (TRL renders them with the base's own
chat template), PEFT LoRA r=32, alpha=64 on q_proj/v_proj, dropout 0.05 (seed-001's adapter),
batch 4, the same learning rate, epochs and beta as tunekit's defaults, fp32 on CPU
(``bf16=False``: TRL's configs default to bf16, ~100x slower on this CPU) and every other TRL
default (gradient checkpointing on, padded batches, the sigmoid loss alone, where tunekit adds
the chosen replies' NLL). tunekit runs
``tunekit.finetune(pairs, method="lora")`` with its defaults (objective dpo from the data).

As in ``benchmarks/vs_trl.py`` the two runs take turns on the CPU (``--slice`` seconds each, at
step boundaries) so both see the same minutes of a machine whose speed drifts with other
tenants' load; each run's time is the time it held the CPU (its evaluations included).

Data: ``examples/data/tldr_pairs.jsonl`` (the preferred reply opens with a "TL;DR:" line).
Quality: the share of the held-out questions (``tldr_heldout.jsonl``: topics and phrasings never
in training) whose greedy reply (80 new tokens) opens with "TL;DR:", and the share that loop (a
three-word phrase three times: ``examples/preferences.py``'s check), for both. Tokens/s counts the real tokens of
both sequences of every pair (prompt + chosen, prompt + rejected) x epochs over the training time.

Usage::

    python benchmarks/vs_trl_dpo.py                          # 280 pairs x 2 epochs
    python benchmarks/vs_trl_dpo.py --rows 64 --epochs 1 --heldout 12   # a quick look

It prints a table and the ratios and writes ``benchmarks/results/vs_trl_dpo-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples")]

from vs_trl import (  # noqa: E402  (the turn-taking and child runs, shared)
    Turns, add_run_arguments, child_command, report, run_children, save_record)

RUNNERS = ("plain_trl", "tunekit_lora")


def _pairs(n: int | None) -> list[dict]:
    import preferences

    rows = [json.loads(line) for line in preferences.PAIRS.read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def _heldout(n: int | None) -> list[dict]:
    import preferences

    return preferences.heldout_rows(n)


def _quality(replies: list[str], rows: list[dict]) -> dict:
    import preferences

    return {**preferences.reply_checks(replies, rows), "sample": replies[0]}


def run_plain(args: argparse.Namespace, out: Path, turns: Turns) -> dict:
    """The plain recipe: TRL DPOTrainer + PEFT, TRL's defaults but fp32 on CPU."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tunekit import methods, plan
    from tunekit.chat import generate
    from tunekit.models import embedded_model_dir

    base = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(out), num_train_epochs=args.epochs, per_device_train_batch_size=4,
        learning_rate=methods.get("lora").lr("dpo"), beta=plan.DEFAULT_BETA, bf16=False, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=10, seed=args.seed, disable_tqdm=True,
    )
    peft = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    dataset = Dataset.from_list(_pairs(args.rows))
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, callbacks=[turns.callback()])
    ds = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    trainer.train()
    trained = trainer.model.eval()
    rows = _heldout(args.heldout)
    replies = [generate(trained, tokenizer, r["prompt"], max_new_tokens=80) for r in rows]
    return {"wall_seconds": turns.active, "tokens": tokens * args.epochs, **_quality(replies, rows)}


def run_tunekit(args: argparse.Namespace, out: Path, turns: Turns) -> dict:
    import tunekit
    from tunekit import preference

    # finetune() takes no callbacks: hand the turn-taking one to the trainer it builds.
    class TakingTurns(preference.PreferenceDPOTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(turns.callback())

    preference.TRAINERS["dpo"] = TakingTurns
    result = tunekit.finetune(_pairs(args.rows), method="lora", output_dir=str(out / "run"), epochs=args.epochs,
                              seed=args.seed, progress=False)
    m = result.metrics
    rows = _heldout(args.heldout)
    replies = [result.chat(r["prompt"], max_new_tokens=80) for r in rows]
    return {"wall_seconds": turns.active, "tokens": m["tokens_per_epoch"] * m["epochs"], **_quality(replies, rows),
            "reward_accuracy_last": m.reward_accuracy_last}


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    turns = Turns(args.turns, args.slice)
    report(run_plain(args, out, turns) if args.child == "plain_trl" else run_tunekit(args, out, turns), turns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p, RUNNERS, rows="training pairs (default: all 280)", heldout="held-out prompts (default: all 40)")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        print("running plain_trl and tunekit_lora taking turns ...", flush=True)
        results = run_children({name: child_command(__file__, name, f"{tmp}/{name}", args) for name in RUNNERS},
                               taking_turns=True)

    print(f"{'':14s} {'wall s':>8s} {'tokens/s':>9s} {'TL;DR rate':>11s} {'loops':>6s}")
    for name, r in results.items():
        print(f"{name:14s} {r['wall_seconds']:8.1f} {r['tokens_per_second']:9.1f} {r['tldr_rate']:11.3f} "
              f"{r['loops']:6.3f}")
    plain, ours = results["plain_trl"], results["tunekit_lora"]
    ratios = {"speedup_tokens_per_second": ours["tokens_per_second"] / plain["tokens_per_second"],
              "speedup_wall_time": plain["wall_seconds"] / ours["wall_seconds"],
              "tldr_rate_delta": ours["tldr_rate"] - plain["tldr_rate"], "loops_delta": ours["loops"] - plain["loops"]}
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    record = {"date": datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": args.rows or 280,
              "heldout": args.heldout or 40, "epochs": args.epochs, "slice_seconds": args.slice,
              "results": results, "ratios": ratios}
    save_record("vs_trl_dpo", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
