"""method="auto": the choice is made from the base's config and the free memory before any
weights load, is logged and recorded, and training follows it."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest

import tunekit
from tunekit import train
from tunekit.errors import ConfigError, ResourceError
from tunekit.options import Options

REPO = Path(__file__).resolve().parents[1]
LLAMA_8B = REPO / "docs" / "configs" / "llama-3-8b"  # a Meta-Llama-3-8B config.json, no weights
GB = 10**9
FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=4)

# `tunekit.estimate` is the function; the module (whose free_memory is the hook) is this one.
estimate_module = importlib.import_module("tunekit.estimate")
plan = importlib.import_module("tunekit.plan")


@pytest.fixture
def free(monkeypatch):
    """Set the free memory method='auto' sees: ``free(64 * GB)``."""

    def set_free(n: int) -> None:
        monkeypatch.setattr(estimate_module, "free_memory", lambda device=None: n)

    return set_free


def test_auto_is_the_default_and_a_valid_choice():
    assert Options().method == "auto"
    Options.from_kwargs({"method": "auto"})
    with pytest.raises(ConfigError, match="auto, full, lora, qlora"):
        Options.from_kwargs({"method": "adapter"})


def test_auto_picks_lora_when_it_fits_logs_why_and_records_it(tiny_model_dir, chat_rows, tmp_path, free, caplog):
    free(64 * GB)
    with caplog.at_level(logging.INFO, logger="tunekit.plan"):
        result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(tmp_path / "r"), **FAST)
    assert result.method == "lora" and result.adapter
    lines = [r.getMessage() for r in caplog.records if "method='auto'" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("method='auto' chose lora: it needs ~"), lines
    assert "64.0 GB free" in lines[0] and "20,000 examples (8 given)" in lines[0]
    run = json.loads((tmp_path / "r" / "tunekit.json").read_text())
    assert run["method"] == "lora" and run["options"]["method"] == "lora"
    assert run["method_choice"]["requested"] == "auto" and run["method_choice"]["reason"] in lines[0]
    assert set(run["method_choice"]["estimated_peak_bytes_per_method"]) == {"full", "lora", "qlora"}
    assert result.metrics["estimated_peak_memory_bytes"] == run["method_choice"]["estimated_peak_bytes"] > 0


def test_auto_reports_the_estimate_at_the_forwards_that_ran(tiny_model_dir, chat_rows, tmp_path, free):
    """When an update's micro-batches run as one larger forward, the peak to expect is that
    forward's, not the one the method was chosen at."""
    free(64 * GB)
    opts = {**FAST, "batch_size": 2, "grad_accum": 3}
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(tmp_path / "r"),
                              training_args={"max_steps": 1}, **opts)
    assert result.method == "lora" and result.metrics["rows_per_forward"] == 6
    chosen = result.run["method_choice"]["estimated_peak_bytes"]
    assert result.metrics["estimated_peak_memory_bytes"] > chosen  # 6 rows' activations, not 2


def test_an_explicit_method_is_not_second_guessed(tiny_model_dir, chat_rows, tmp_path, free, monkeypatch):
    free(1)  # nothing would fit; an explicit method must not even ask
    monkeypatch.setattr(estimate_module, "choose_method", lambda *a, **k: pytest.fail("auto ran"))
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method="lora", output_dir=str(tmp_path / "r"),
                              training_args={"max_steps": 1}, **FAST)
    assert result.run["method_choice"] is None and "estimated_peak_memory_bytes" not in result.metrics


def _resolve(free, n_bytes, *, device="cuda", n_examples=500, seq_len=512, **options):
    """plan.auto_method for a planned device (no GPU needed: nothing is loaded)."""
    import torch

    from tunekit.placement import Placement

    free(n_bytes)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = [{"input_ids": [0] * seq_len}] * n_examples
    return plan.auto_method(Options(**options), LLAMA_8B, rows, Placement(device, dtype))


def test_auto_follows_the_seeds_advice_on_an_8b_model(free):
    # Llama-3-8B, bf16, batch 4 x 512, checkpointing on: LoRA ≈ 23.5 GB, QLoRA ≈ 13.1 GB, full ≈ 146 GB.
    assert _resolve(free, 80 * GB)["method"] == "lora"
    choice = _resolve(free, 24 * GB)  # LoRA needs 23.5 GB + the 20% margin: only QLoRA fits
    assert choice["method"] == "qlora" and choice["reason"].startswith("qlora: only the 4-bit base fits")
    assert choice["estimated_peak_bytes"] == choice["estimated_peak_bytes_per_method"]["qlora"]
    assert _resolve(free, 200 * GB, n_examples=50_000)["method"] == "full"
    assert _resolve(free, 200 * GB, n_examples=5_000)["method"] == "lora"  # fits, but too little data


def test_auto_turns_checkpointing_on_for_training_when_only_that_fits(free, tiny_model_dir):
    from tunekit.estimate import estimate

    kw = dict(max_length=128, batch_size=4, grad_accum=4, device="cpu", dtype="fp32", tokens_per_epoch=128 * 8,
              dropout=0.05)
    plain = estimate(str(tiny_model_dir), "lora", **kw)
    ckpt = estimate(str(tiny_model_dir), "lora", gradient_checkpointing=True, **kw)
    assert ckpt.total_bytes < plain.total_bytes
    between = int((plain.total_bytes + ckpt.total_bytes) / 2 * 1.2)

    import torch

    from tunekit.placement import Placement

    free(between)
    rows = [{"input_ids": [0] * 128}] * 8
    choice = plan.auto_method(Options(), tiny_model_dir, rows, Placement("cpu", torch.float32))
    assert choice["gradient_checkpointing"] is True and "checkpointing on" in choice["reason"], choice
    # The user's explicit "no checkpointing" is respected: LoRA then does not fit (QLoRA neither).
    with pytest.raises(ResourceError):
        plan.auto_method(Options(gradient_checkpointing=False), tiny_model_dir, rows,
                             Placement("cpu", torch.float32))


def test_training_follows_the_choice_qlora(tiny_model_dir, chat_rows, tmp_path, monkeypatch):
    # On CPU QLoRA's peak is never below LoRA's (bitsandbytes loads each layer in fp32 before
    # quantising it), so auto only picks it when planning for a GPU (test above). Here: whatever
    # choose_method says is what trains, with 4-bit loading.
    real = estimate_module.choose_method

    def only_qlora(base, **kw):
        _, _, ests = real(base, **{**kw, "free_bytes": 10**15})
        return "qlora", "qlora: only the 4-bit base fits (test)", ests

    monkeypatch.setattr(estimate_module, "choose_method", only_qlora)
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(tmp_path / "r"),
                              training_args={"max_steps": 1}, **FAST)
    assert result.method == "qlora" and result.run["method_choice"]["reason"].endswith("(test)")
    assert result.run["options"]["method"] == "qlora"


def test_nothing_fits_raises_the_breakdown_before_any_weights_load(tiny_model_dir, chat_rows, tmp_path, free,
                                                                   monkeypatch):
    free(100 * 10**6)  # 100 MB: below the ~0.5 GB a CPU training process needs before any tensor
    monkeypatch.setattr(train.models, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    out = tmp_path / "r"
    with pytest.raises(ResourceError) as err:
        tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), **FAST)
    msg = str(err.value)
    assert msg.startswith("no fine-tuning method fits in 100 MB free on cpu")
    for word in ("full", "lora", "qlora", "weights", "optimizer states", "activations", "peak total"):
        assert word in msg
    assert set(err.value.breakdown) == {"full", "lora", "qlora"}
    assert not out.exists(), "a run that cannot start leaves no folder behind"


def test_unestimable_architecture_falls_back_to_lora(tiny_model_dir, free, monkeypatch, caplog):
    import torch

    from tunekit.errors import ModelError
    from tunekit.placement import Placement

    def broken(*a, **k):
        raise ModelError("transformers cannot build a causal LM from this config (custom)")

    monkeypatch.setattr(estimate_module, "choose_method", broken)
    with caplog.at_level(logging.WARNING, logger="tunekit.plan"):
        choice = plan.auto_method(Options(), tiny_model_dir, [{"input_ids": [0]}], Placement("cpu", torch.float32))
    assert choice["method"] == "lora" and "cannot estimate memory" in caplog.text
