"""Quickstart: teach the embedded SmolLM2-135M-Instruct to write podcast show notes in a fixed
format, then compare base and fine-tuned answers on episodes it has never seen.

Run it with `make demo` (or `python examples/quickstart.py` in the project's venv). About
5-7 minutes on 2 CPU cores.
"""

import json
import textwrap
from pathlib import Path

import tunekit

HERE = Path(__file__).parent
heldout = [json.loads(line) for line in (HERE / "data" / "shownotes_heldout.jsonl").read_text().splitlines()]

print(tunekit.preview(str(HERE / "data" / "shownotes.jsonl"), n=1))

result = tunekit.finetune(
    str(HERE / "data" / "shownotes.jsonl"),   # 160 conversations in OpenAI chat format
    eval_data=str(HERE / "data" / "shownotes_heldout.jsonl"),
    method="lora",                             # base defaults to the embedded SmolLM2-135M-Instruct
    # A 135M model learns a short format fastest with small steps and a higher adapter lr
    # (80 updates instead of the default 4x accumulation's 20).
    lr=1e-3, grad_accum=1, epochs=2,
    output_dir=None,                           # a fresh runs/<base>-lora-<time> folder
)
print(json.dumps({k: result.metrics[k] for k in
                  ("eval_loss_first", "eval_loss_best", "steps", "wall_seconds", "tokens_per_second")}, indent=2))
print(f"saved to {result.output_dir}\n")


def column(text: str, width: int = 48) -> list[str]:
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width) or [""]
    return lines


for row in heldout[:3]:
    prompt = row["messages"][0]["content"]
    before = result.chat(prompt, use_adapter=False, max_new_tokens=80)
    after = result.chat(prompt, max_new_tokens=80)
    print("PROMPT:", prompt)
    left, right = column(before), column(after)
    print(f"{'BASE':48s} | FINE-TUNED")
    print("-" * 48 + "-+-" + "-" * 48)
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"{a:48s} | {b}")
    print()

# Reopen the saved run later, by folder (or by Hub id once pushed):
again = tunekit.load(result.output_dir)
print(again.chat([{"role": "user", "content": heldout[-1]["messages"][0]["content"]}], max_new_tokens=80))
