"""Preference tuning: teach the embedded SmolLM2-135M-Instruct to open every reply with a one-line
"TL;DR:" summary, from 280 preference pairs, and measure it on questions it has never seen.

Each pair holds the same answer twice; only the chosen side leads with the summary
(``examples/data/tldr_pairs.jsonl``, written by ``examples/data/make_tldr_pairs.py``). tunekit
sees pairs and trains DPO (TRL's ``DPOTrainer``, LoRA, the reference being the base with the
adapter switched off). The measure: the share of replies to the 40 held-out questions (topics
and phrasings never in training) whose first line starts with "TL;DR:", base against tuned.

Run it with ``python examples/preferences.py`` in the project's venv: about 5-8 minutes on 2
CPU cores. ``--rows``/``--epochs``/``--lr``/``--beta`` try other settings (the defaults are
tunekit's own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tunekit

HERE = Path(__file__).parent
PAIRS = HERE / "data" / "tldr_pairs.jsonl"
HELDOUT = HERE / "data" / "tldr_heldout.jsonl"


def heldout_prompts(n: int | None = None) -> list[str]:
    """The held-out questions (never seen in training)."""
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    return [row["prompt"][-1]["content"] for row in rows][:n]


def opens_with_tldr(reply: str) -> bool:
    """The measured property: the reply's first line is a "TL;DR:" summary."""
    return reply.lstrip().startswith("TL;DR:")


def tldr_rate(result, prompts: list[str], *, use_adapter: bool = True, max_new_tokens: int = 12) -> float:
    """Share of ``prompts`` whose greedy reply opens with "TL;DR:" (a few tokens tell)."""
    replies = [result.chat(p, use_adapter=use_adapter, max_new_tokens=max_new_tokens) for p in prompts]
    return sum(map(opens_with_tldr, replies)) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="train on the first N pairs only")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--beta", type=float, default=None)
    parser.add_argument("--heldout", type=int, default=None, help="measure on the first N held-out prompts")
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    data = str(PAIRS)
    if args.rows:
        data = [json.loads(line) for line in PAIRS.read_text().splitlines()[: args.rows]]
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("beta", args.beta)) if v is not None}
    result = tunekit.finetune(data, method="lora", output_dir=args.output_dir, **given)  # objective: dpo, from the data

    prompts = heldout_prompts(args.heldout)
    base, tuned = tldr_rate(result, prompts, use_adapter=False), tldr_rate(result, prompts)
    m = result.metrics
    print(json.dumps({
        "heldout_prompts": len(prompts), "tldr_rate_base": base, "tldr_rate_tuned": tuned,
        **{k: m[k] for k in ("reward_accuracy_first", "reward_accuracy_last", "reward_margin_last", "steps",
                             "wall_seconds", "tokens_per_second") if k in m},
        **given, "output_dir": str(result.output_dir),
    }, indent=2))
    prompt = prompts[0]
    print("PROMPT:", prompt)
    print("BASE:  ", result.chat(prompt, use_adapter=False, max_new_tokens=60))
    print("TUNED: ", result.chat(prompt, max_new_tokens=60))


if __name__ == "__main__":
    main()
