"""The run record: folders written by tunekit 0.1.0 still load, and save → load changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunekit import record
from tunekit.record import METRICS_FILE, RUN_FILE, DataInfo, Metrics, RunInfo, TemplateInfo

OLD_RUN = Path(__file__).parent / "fixtures" / "run-0.1.0"


def raw(name: str) -> dict:
    return json.loads((OLD_RUN / name).read_text())


def test_a_0_1_0_run_loads_with_every_field():
    run = RunInfo.load(OLD_RUN)
    assert isinstance(run, RunInfo) and run.trained_here
    assert (run.method, run.adapter, run.objective, run.tunekit_version) == ("lora", True, "sft", "0.1.0")
    assert run.base == run.base_path and run.embedded_base is False and run.base_license == "mit"
    assert isinstance(run.template, TemplateInfo)
    assert (run.template.name, run.template.eos) == ("chatml", "<|im_end|>") and len(run.template.sha256) == 64
    assert isinstance(run.data, DataInfo)
    assert (run.data.rows, run.data.train_rows, run.data.eval_rows, run.data.skipped) == (12, 8, 4, 0)
    assert (run.data.format, run.data.hub_dataset) == ("messages", None)
    assert run.data.train_tokens > run.data.trained_tokens > 0
    assert run.method_choice["requested"] == "auto" and run.method_choice["method"] == "lora"
    assert run.option("grad_accum") == 1 and run.option("lr", 2e-4) == 2e-4  # recorded as null
    assert run.train_on == "assistant" and len(run.example_prompts) == 4 and run.created
    assert run.extra == {} and run.template.extra == {} and run.data.extra == {}
    # Still a read-only mapping, for code written against the dicts.
    assert run["method"] == "lora" and run["data"]["train_rows"] == 8 and run.get("nope") is None


def test_a_0_1_0_runs_metrics_load_with_every_field():
    metrics = Metrics.load(OLD_RUN)
    assert (metrics.steps, metrics.epochs, metrics.train_rows, metrics.eval_rows) == (2, 1.0, 8, 4)
    assert metrics.eval_loss_best <= metrics.eval_loss_first
    assert (metrics.device, metrics.dtype, metrics.peak_memory_kind) == ("cpu", "float32", "rss")
    assert 0 < metrics.trainable_params < metrics.total_params and metrics.rows_per_forward == 4
    assert metrics.estimated_peak_memory_bytes == RunInfo.load(OLD_RUN).method_choice["estimated_peak_bytes"]
    assert metrics.extra == {} and metrics["steps"] == 2


def test_describe_folder_opens_a_0_1_0_run():
    run, metrics = record.describe_folder(OLD_RUN)
    assert run.to_dict() == RunInfo.load(OLD_RUN).to_dict()
    assert metrics.to_dict() == Metrics.load(OLD_RUN).to_dict()


def test_save_then_load_changes_nothing(tmp_path):
    run, metrics = RunInfo.load(OLD_RUN), Metrics.load(OLD_RUN)
    assert run.save(tmp_path) == tmp_path / RUN_FILE and metrics.save(tmp_path) == tmp_path / METRICS_FILE
    # The same keys and values; the run gains the objective 0.1.0 did not write.
    assert json.loads((tmp_path / RUN_FILE).read_text()) == {**raw(RUN_FILE), "objective": "sft"}
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == raw(METRICS_FILE)
    assert RunInfo.load(tmp_path).to_dict() == run.to_dict()
    assert Metrics.load(tmp_path).to_dict() == metrics.to_dict()


def test_fields_of_a_newer_tunekit_are_kept(tmp_path):
    newer = raw(RUN_FILE)
    newer["future_field"] = {"x": 1}
    newer["template"] = {**newer["template"], "future_template_field": "y"}
    (tmp_path / RUN_FILE).write_text(json.dumps(newer))
    (tmp_path / METRICS_FILE).write_text(json.dumps({**raw(METRICS_FILE), "future_metric": 0.5}))
    run, metrics = record.describe_folder(tmp_path)
    assert run.extra == {"future_field": {"x": 1}} and run.template.extra == {"future_template_field": "y"}
    assert metrics.extra == {"future_metric": 0.5}
    again = tmp_path / "again"
    again.mkdir()
    run.save(again)
    metrics.save(again)
    assert json.loads((again / RUN_FILE).read_text()) == {**newer, "objective": "sft"}
    assert json.loads((again / METRICS_FILE).read_text())["future_metric"] == 0.5


def test_a_fresh_run_writes_the_0_1_0_keys(tiny_model_dir, chat_rows, tmp_path):
    """Today's training writes what 0.1.0 wrote (plus the objective and newer options)."""
    import tunekit

    out = tmp_path / "run"
    tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), eval_split=4, epochs=1,
                     batch_size=4, grad_accum=1, max_length=128, progress=False)
    new, old = json.loads((out / RUN_FILE).read_text()), raw(RUN_FILE)
    assert set(new) == set(old) | {"objective"} and new["objective"] == "sft"
    for key in ("template", "data", "method_choice"):
        # The template gained its tool-call format (issue 18).
        assert set(new[key]) == set(old[key]) | ({"tools"} if key == "template" else set()), key
    assert set(old["options"]) <= set(new["options"])
    assert json.loads((out / METRICS_FILE).read_text()).keys() == raw(METRICS_FILE).keys()
    for key in ("method", "adapter", "train_on", "example_prompts"):
        assert new[key] == old[key], key
    for key in ("rows", "train_rows", "eval_rows", "skipped", "train_tokens", "trained_tokens"):
        assert new["data"][key] == old["data"][key], key


@pytest.mark.parametrize("name", [RUN_FILE, METRICS_FILE])
def test_an_unreadable_record_says_which_file(tmp_path, name):
    shutil.copytree(OLD_RUN, tmp_path / "run")
    (tmp_path / "run" / name).write_text("{not json")
    from tunekit.errors import ModelError

    with pytest.raises(ModelError, match=name):
        record.describe_folder(tmp_path / "run")
