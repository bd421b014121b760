"""The embedded SmolLM2-135M-Instruct really learns the show-notes format, with each method.

Slow (about a minute or two per method on 2 CPU cores); CI runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunekit

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
pytestmark = pytest.mark.slow


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _in_format(text: str) -> bool:
    lines = text.strip().splitlines()
    return (len(lines) >= 3 and lines[0].startswith("🎙️") and " — Ep. " in lines[0]
            and lines[1].startswith("Guest: ") and lines[2].startswith("Topics: "))


# 32 updates: the default learning rates (2e-4 adapters, 2e-5 full) are tuned for the seeds'
# longer runs; a 135M model learns a format in 32 updates at 1e-3 (adapters) and 1e-4 (full).
# QLoRA gets 64 updates of 2 rows (the same rows and epochs): with peft 0.21 / bitsandbytes 0.50
# (2026-12) its 32 updates of 4 learn the format but no longer copy the guest's name — the same
# with the fast paths off and with the code before the architecture change (which, with these
# versions, first had to stop modifying bitsandbytes' 4-bit output in place).
@pytest.mark.parametrize("method, extra", [
    ("lora", {"lr": 1e-3}),
    ("qlora", {"lr": 1e-3, "batch_size": 2}),
    ("full", {"lr": 1e-4}),
])
def test_embedded_model_learns_the_format(method, extra, tmp_path):
    train = _rows("shownotes.jsonl")[:64]
    heldout = _rows("shownotes_heldout.jsonl")
    options = {"epochs": 2, "batch_size": 4, "grad_accum": 1, "eval_steps": 8, **extra}
    result = tunekit.finetune(train, eval_data=str(DATA / "shownotes_heldout.jsonl"), method=method,
                              output_dir=str(tmp_path / method), progress=False, **options)
    m = result.metrics
    assert m["eval_loss_best"] < m["eval_loss_first"] * 0.7, m
    prompts = [row["messages"][0]["content"] for row in heldout[:3]]
    tuned = [result.chat(p, max_new_tokens=64) for p in prompts]
    assert sum(_in_format(t) for t in tuned) >= 2, tuned
    # The episode's guest is copied from the prompt, as in training.
    guest = heldout[0]["messages"][1]["content"].splitlines()[1]
    assert guest in tuned[0], (guest, tuned[0])
    if result.adapter:
        base = [result.chat(p, max_new_tokens=64, use_adapter=False) for p in prompts]
        assert not any(_in_format(b) for b in base), base
