"""Every bad row in one report: structural problems and rows over max_length tokens are found in
one pass, worded the same way, before any weights load (the tokenizer alone decides lengths)."""

from __future__ import annotations

import json

import pytest

import tunekit
from tunekit import train
from tunekit.errors import DataError

FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False)


def _cookbook_like(path, good: int = 8):
    """The OpenAI cookbook's flawed toy file, scaled: good rows, then one without a user message
    and one degenerate ~26,000-character row (under max_chars, far over max_length tokens)."""
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(good)]
    rows.append({"messages": [{"role": "system", "content": "You are terse."},
                              {"role": "assistant", "content": "Hello."}]})
    rows.append({"messages": [{"role": "user", "content": "Repeat after me."},
                              {"role": "assistant", "content": "la " * 8_700}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return good + 1, good + 2  # the bad rows' line numbers


def test_structural_and_over_long_rows_are_reported_together(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "toy_chat.jsonl"
    no_user, too_long = _cookbook_like(data)
    monkeypatch.setattr(train.models, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(DataError) as err:
        tunekit.finetune(str(data), base=str(tiny_model_dir), output_dir=str(tmp_path / "out"), **FAST)
    e = err.value
    text = str(e)
    assert text.startswith(f"{data}: 2 of {too_long} rows cannot be used:")
    # One wording for both stages: file, line, field, what to do.
    assert f"{data}, line {no_user}, messages:" in text
    assert f"{data}, line {too_long}, messages:" in text and "max_length=128" in text
    assert len(e.problems) == 2 and (e.path, e.row) == (str(data), no_user)
    assert f'on_bad_rows="skip" to train on the {too_long - 2} good rows' in text
    assert not (tmp_path / "out").exists()


def test_the_dry_run_reports_them_too(tmp_path, tiny_model_dir):
    data = tmp_path / "toy_chat.jsonl"
    _cookbook_like(data)
    with pytest.raises(DataError, match="2 of 10 rows cannot be used"):
        train.plan(str(data), base=str(tiny_model_dir), **FAST)


def test_skip_drops_both_kinds_at_once_and_counts_them(tmp_path, tiny_model_dir):
    data = tmp_path / "toy_chat.jsonl"
    _cookbook_like(data)
    result = tunekit.finetune(str(data), base=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                              on_bad_rows="skip", eval_split=2, training_args={"max_steps": 1}, **FAST)
    assert result.metrics.skipped_rows == 2 and result.run.data.skipped == 2
    assert (result.run.data.train_rows, result.run.data.eval_rows) == (6, 2)
    assert "(2 skipped as invalid)" in (result.output_dir / "README.md").read_text()


def test_a_separate_eval_file_is_reported_in_the_same_error(tmp_path, tiny_model_dir):
    data, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    _cookbook_like(data)
    _, held_long = _cookbook_like(held, good=2)
    with pytest.raises(DataError) as err:
        tunekit.finetune(str(data), eval_data=str(held), base=str(tiny_model_dir),
                         output_dir=str(tmp_path / "out"), **FAST)
    text = str(err.value)
    assert f"{data}: 2 of 10 rows cannot be used:" in text
    assert f"{held}: 2 of 4 rows cannot be used:" in text and f"{held}, line {held_long}, messages:" in text
    assert len(err.value.problems) == 4
