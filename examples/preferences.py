"""Preference tuning: teach the embedded SmolLM2-135M-Instruct to open every reply with a one-line
"TL;DR:" summary, from 280 preference pairs, and measure it on questions it has never seen.

Each pair holds the same answer twice; only the chosen side leads with the summary
(``examples/data/tldr_pairs.jsonl``, written by ``examples/data/make_tldr_pairs.py``). tunekit
sees pairs and trains DPO (TRL's ``DPOTrainer``, LoRA, the reference being the base with the
adapter switched off). The measure: the share of replies to the 40 held-out questions (topics
and phrasings never in training) whose first line starts with "TL;DR:", base against tuned.
That the replies are still answers is checked too: the share that talk about the topic asked
about, the share that loop (a phrase said three times), and the perplexity of the held-out
reference replies.

Run it with ``python examples/preferences.py`` in the project's venv: about 13 minutes on 2
quiet CPU cores (7-9 to train 126 updates, 5-6 to write 80 replies of 80 tokens).
``--rows``/``--epochs``/``--lr``/``--beta``/``--objective``/``--method`` try other settings (the
defaults are tunekit's own); ``--measure RUN`` measures an earlier run's folder.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import tunekit

HERE = Path(__file__).parent
PAIRS = HERE / "data" / "tldr_pairs.jsonl"
HELDOUT = HERE / "data" / "tldr_heldout.jsonl"


def heldout_rows(n: int | None = None) -> list[dict]:
    """The held-out pairs (``prompt``, ``chosen``, ``rejected``, ``topic``), never seen in training."""
    return [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()][:n]


def opens_with_tldr(reply: str) -> bool:
    """The measured property: the reply's first line is a "TL;DR:" summary."""
    return reply.lstrip().startswith("TL;DR:")


def on_topic(reply: str, topic: str) -> bool:
    """The reply names what it was asked about (a word of the topic, plurals and endings aside)."""
    words = [w for w in re.findall(r"[a-z]+", topic.lower()) if w not in {"a", "the", "why", "is"}]
    return any(w[:6] in reply.lower() for w in words)


def loops(reply: str) -> bool:
    """The reply repeats itself: some three-word phrase occurs three times or more."""
    words = reply.lower().split()
    return max(Counter(zip(words, words[1:], words[2:])).values(), default=0) >= 3


def reply_checks(replies: list[str], rows: list[dict]) -> dict:
    """The shares of ``replies`` (to the held-out ``rows``, in order) that open with "TL;DR:",
    stay on topic and loop."""
    share = lambda flags: sum(flags) / len(rows)  # noqa: E731
    return {"tldr_rate": share(map(opens_with_tldr, replies)),
            "on_topic": share(on_topic(reply, r["topic"]) for reply, r in zip(replies, rows)),
            "loops": share(map(loops, replies))}


def quality(result, rows: list[dict], *, use_adapter: bool = True, max_new_tokens: int = 80) -> dict:
    """TL;DR rate and the checks that the replies are still answers, for the tuned model or its base."""
    replies = [result.chat(r["prompt"], use_adapter=use_adapter, max_new_tokens=max_new_tokens) for r in rows]
    references = [{"messages": r["prompt"] + r["chosen"]} for r in rows]
    return {**reply_checks(replies, rows),
            "reference_perplexity": result.evaluate(references, use_adapter=use_adapter)["perplexity"],
            "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="train on the first N pairs only")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--beta", type=float, default=None)
    parser.add_argument("--objective", choices=("dpo", "kto"), default=None, help="kto trains the pairs unpaired")
    parser.add_argument("--method", choices=("lora", "qlora", "full"), default="lora")
    parser.add_argument("--heldout", type=int, default=None, help="measure on the first N held-out prompts")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--measure", metavar="RUN", help="measure an earlier run's folder instead of training")
    args = parser.parse_args()

    data = str(PAIRS)
    if args.rows:
        data = [json.loads(line) for line in PAIRS.read_text().splitlines()[: args.rows]]
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("beta", args.beta),
                                ("objective", args.objective)) if v is not None}
    if args.measure:
        result = tunekit.load(args.measure)
    else:  # the objective (dpo) comes from the data
        result = tunekit.finetune(data, method=args.method, output_dir=args.output_dir, **given)

    rows = heldout_rows(args.heldout)
    # A full fine-tune has no separate base to switch back to: measure the base with --method lora.
    base = quality(result, rows, use_adapter=False) if result.adapter else {}
    tuned = quality(result, rows)
    m = result.metrics
    print(json.dumps({
        "heldout_prompts": len(rows),
        **{f"{k}_base": base[k] for k in base if k != "replies"},
        **{f"{k}_tuned": tuned[k] for k in tuned if k != "replies"},
        **{k: m[k] for k in ("reward_accuracy_first", "reward_accuracy_last", "reward_margin_last", "steps",
                             "wall_seconds", "tokens_per_second") if k in m},
        **given, "output_dir": str(result.output_dir),
    }, indent=2))
    for i in (0, len(rows) // 2):
        print("PROMPT:", rows[i]["prompt"][-1]["content"])
        if base:
            print("BASE:  ", base["replies"][i])
        print("TUNED: ", tuned["replies"][i])


if __name__ == "__main__":
    main()
