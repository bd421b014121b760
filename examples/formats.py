"""One small fine-tune per data format, to show that they all go through the same call.

Each run is two LoRA updates on the embedded SmolLM2-135M-Instruct (about 15 s each on 2 CPU
cores); `tunekit.preview` shows how the first row of each file is rendered and what is trained.
Run: `python examples/formats.py`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import tunekit

FORMATS = Path(__file__).parent / "data" / "formats"
FILES = [
    "messages.jsonl",            # OpenAI chat, with a weight-0 assistant turn and a system message
    "sharegpt.json",             # {"conversations": [{"from": "human", "value": ...}, ...]}
    "alpaca.csv",                # instruction / input / output columns
    "prompt_completion.jsonl",   # prompt + completion (strings or message lists)
    "prompt_completion.parquet",
    "text.jsonl",                # plain text: every token is trained
]

with tempfile.TemporaryDirectory() as runs:
    for name in FILES:
        path = FORMATS / name
        print(f"=== {name}")
        print(tunekit.preview(str(path), n=1))
        result = tunekit.finetune(
            str(path), eval_split=0, epochs=1, batch_size=2, grad_accum=1,
            output_dir=f"{runs}/{path.stem}-{path.suffix[1:]}", progress=False,
            training_args={"max_steps": 2},
        )
        m = result.metrics
        print(f"trained {m.steps} steps on {m.train_rows} rows ({result.run.data.format}); "
              f"loss {m.train_loss_first:.3f}\n")
