"""tunekit.compare: every method on the same rows, each in its own process, tabulated."""

from __future__ import annotations

import json

import pytest

import tunekit
from tunekit.compare import Comparison
from tunekit.errors import ConfigError

FAST = dict(batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=4)
FIELDS = ("trainable_params", "total_params", "estimated_peak_bytes", "measured_peak_bytes", "peak_kind",
          "wall_seconds", "tokens_per_second", "train_loss", "eval_loss", "metric", "steps", "output_dir")


def starts_with_digit(prediction: str, reference: str) -> float:
    """A stand-in task metric (the tiny random model will not get anything right)."""
    return float(prediction.strip()[:1].isdigit())


def test_compare_trains_each_method_and_writes_the_table(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "cmp"
    c = tunekit.compare(chat_rows, base=str(tiny_model_dir), steps=2, metric=starts_with_digit, output_dir=str(out),
                        max_new_tokens=4, **FAST)
    assert isinstance(c, Comparison)
    assert [r.method for r in c.rows] == ["full", "lora", "qlora"]
    assert (c.train_rows, c.eval_rows, c.steps, c.metric_name) == (8, 4, 2, "starts_with_digit")
    for r in c.rows:
        assert r.error is None
        for name in FIELDS:
            assert getattr(r, name) is not None, (r.method, name)
        assert r.steps == 2 and 0 <= r.metric <= 1 and r.eval_loss > 0 and r.train_loss > 0
        assert r.peak_kind == "rss" and r.measured_peak_bytes > 100 * 10**6
        # The estimator is checked to ±25% elsewhere; here the numbers only need to be of one kind.
        assert 0.5 < r.estimated_peak_bytes / r.measured_peak_bytes < 2, r
        assert (out / r.method / "tunekit.json").exists()
    assert c["full"].trainable_params == c["full"].total_params
    assert c["lora"].trainable_params == c["qlora"].trainable_params < c["full"].trainable_params / 2

    # The same rows for every method, written once.
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 8
    assert len((out / "data" / "eval.jsonl").read_text().splitlines()) == 4
    for r in c.rows:
        run = json.loads((out / r.method / "tunekit.json").read_text())
        assert run["data"]["train_rows"] == 8 and run["data"]["eval_rows"] == 4 and run["method"] == r.method

    md = (out / "compare.md").read_text()
    assert md == c.markdown()
    assert "| method | trainable params | peak memory (est.) | peak memory (measured) |" in md
    assert "| eval loss | starts_with_digit |" in md
    for m in ("| full |", "| lora |", "| qlora |"):
        assert m in md
    saved = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["full", "lora", "qlora"]
    assert set(FIELDS) <= set(saved["rows"][0])
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_reported_together_before_anything_runs(chat_rows, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError) as err:
        tunekit.compare(chat_rows, methods=("lora", "auto"), steps=0, method="lora", epohcs=1, output_dir=str(out))
    msg = str(err.value)
    for part in ("'auto' is not one of", "steps must be", "sets method itself", "did you mean 'epochs'"):
        assert part in msg
    assert not out.exists()
