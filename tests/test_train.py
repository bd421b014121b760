"""Training end to end on a tiny random model: every method, output folder, resume, errors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import tunekit
from tunekit.errors import ConfigError, DataError

FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_each_method_trains_and_saves_a_loadable_output(method, tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / method
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), method=method, output_dir=str(out),
                              eval_split=4, **FAST)
    assert result.method == method
    assert result.adapter == (method != "full")
    weights = "adapter_model.safetensors" if method != "full" else "model.safetensors"
    for name in (weights, "README.md", "metrics.json", "loss.png", "tunekit.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2  # 8 train rows / batch 4
    assert metrics["train_rows"] == 8 and metrics["eval_rows"] == 4
    assert metrics["eval_loss_first"] is not None
    assert metrics["tokens_per_second"] > 0 and metrics["peak_memory_bytes"] > 0
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    if method != "full":
        assert metrics["trainable_params"] < metrics["total_params"] / 2
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
        assert cfg["r"] == 16 and cfg["lora_alpha"] == 32
    reopened = tunekit.load(out)
    reply = reopened.chat("What is 2 plus 2?", max_new_tokens=5)
    assert isinstance(reply, str)
    assert not list(out.glob("*.bin")), "weights must be safetensors"


def test_unknown_and_invalid_options_are_all_reported(chat_rows):
    with pytest.raises(ConfigError) as err:
        tunekit.finetune(chat_rows, metod="lora", lr=5, epochs=0, method="adapter")
    msg = str(err.value)
    assert "metod" in msg and "did you mean 'method'" in msg
    with pytest.raises(ConfigError) as err:
        tunekit.finetune(chat_rows, lr=5, epochs=0, method="adapter", training_args={"learnin_rate": 1})
    assert len(err.value.problems) == 4
    assert "learning_rate" in str(err.value)


def test_existing_output_dir_is_never_overwritten(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="never overwrites"):
        tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), **FAST)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
@pytest.mark.parametrize("under", [False, True], ids=["the-file", "inside-it"])
def test_an_output_dir_that_is_a_file_is_a_config_error(resume, under, tiny_model_dir, chat_rows, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    out = taken / "run" if under else taken
    with pytest.raises(ConfigError) as err:
        tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), resume=resume, **FAST)
    msg = str(err.value)
    assert str(out) in msg and "not a folder" in msg
    assert ("inside" in msg) == under
    assert taken.read_text() == "keep me"


def test_resume_on_a_folder_that_is_not_a_run_changes_nothing(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    mine = {"README.md": "# my project\n", "metrics.json": '{"mine": 1}'}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), resume=True, **FAST)
    msg = str(err.value)
    assert str(out) in msg and "not a tunekit run" in msg
    assert "tunekit.json" in msg and "checkpoints/" in msg  # what a run folder would hold
    assert "README.md, metrics.json" in msg
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)
    assert all((out / name).read_text() == text for name, text in mine.items())


def test_resume_on_an_empty_or_missing_folder_starts_the_run(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "new"
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), resume=True, **FAST)
    assert (out / "tunekit.json").is_file() and result.metrics["steps"] == 3


def test_bad_rows_stop_training_before_any_model_loads(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError) as err:
        tunekit.finetune(str(bad), base=str(tiny_model_dir), output_dir=str(tmp_path / "o"), **FAST)
    assert "bad.jsonl" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "run"
    opts = dict(base=str(tiny_model_dir), output_dir=str(out), eval_split=0, epochs=2, batch_size=4,
                grad_accum=1, progress=False, eval_steps=1)
    tunekit.finetune(chat_rows, **opts, training_args={"max_steps": 2})
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    # Continue the same run to the end: it must start at step 2, not redo steps 1-2.
    result = tunekit.finetune(chat_rows, **opts, resume=True)
    history = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == sorted(set(steps)), "no step is trained twice"
    assert result.metrics["steps"] == 6


def test_base_comparison_and_streaming(tiny_model_dir, chat_rows, tmp_path):
    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(tmp_path / "r"), **FAST)
    whole = result.chat("What is 3 plus 3?", max_new_tokens=6)
    pieces = list(result.chat("What is 3 plus 3?", max_new_tokens=6, stream=True))
    assert "".join(pieces).strip() == whole
    base_reply = result.chat("What is 3 plus 3?", max_new_tokens=6, use_adapter=False)
    assert isinstance(base_reply, str)
    ev = result.evaluate(chat_rows[:4])
    assert ev["rows"] == 4 and ev["loss"] > 0 and ev["tokens"] > 0
    # The base alone scores its own loss, and the adapter is back on afterwards.
    base = result.evaluate(chat_rows[:4], use_adapter=False)
    assert base["tokens"] == ev["tokens"] and base["loss"] != pytest.approx(ev["loss"], abs=1e-6)
    assert result.evaluate(chat_rows[:4])["loss"] == pytest.approx(ev["loss"], abs=1e-6)


def test_the_last_update_is_evaluated_and_can_be_the_best(tiny_model_dir, chat_rows, tmp_path):
    """5 updates with evaluations every 2: the Trainer alone would score steps 2 and 4 only and
    never consider the final weights."""
    out = tmp_path / "run"
    result = tunekit.finetune(chat_rows * 2, base=str(tiny_model_dir), method="lora", output_dir=str(out),
                              eval_split=4, epochs=1, batch_size=4, grad_accum=1, eval_steps=2, early_stopping=0,
                              lr=1e-3, progress=False)
    assert result.metrics["steps"] == 5  # 20 train rows / batch 4
    state = json.loads((out / "checkpoints" / "checkpoint-5" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [0, 2, 4, 5]


def test_default_evaluations_stay_within_a_tenth_of_the_training_compute():
    from tunekit.plan import default_eval_steps as _default_eval_steps

    rows = lambda n: [{"input_ids": [1] * 60}] * n  # noqa: E731
    # The usual 10% split: the start and four more (steps 7, 14, 21 and the last, 25).
    assert _default_eval_steps(25, rows(180), rows(20), 2) == 7
    # A small eval set: at most five after the start.
    assert _default_eval_steps(25, rows(180), rows(5), 2) == 5
    # 200 rows x 2 epochs with 40 eval rows: the start and two more (each eval = 40 forward passes
    # against 1200 forward-equivalents of training).
    assert _default_eval_steps(25, rows(200), rows(40), 2) == 13
    # However large the eval set, the end of training is still scored once after the start.
    assert _default_eval_steps(10, rows(10), rows(1000), 1) == 10
    assert _default_eval_steps(25, rows(200), [], 2) == 5


def test_small_data_sets_get_enough_updates():
    from tunekit.methods import default_grad_accum

    # 200 rows x 2 epochs at batch 4: 16-row updates would give 26; 4-row updates give 100.
    assert default_grad_accum(200, 4, 2) == 1
    assert default_grad_accum(400, 4, 2) == 2
    assert default_grad_accum(1000, 4, 2) == 4  # large enough for the seeds' 16-row updates
    assert default_grad_accum(20, 4, 1) == 1


def test_an_explicit_grad_accum_is_kept_and_the_default_is_recorded(tiny_model_dir, chat_rows, tmp_path):
    opts = dict(base=str(tiny_model_dir), method="lora", eval_split=0, epochs=1, progress=False)
    auto = tunekit.finetune(chat_rows, output_dir=str(tmp_path / "auto"), **opts)
    assert json.loads((auto.output_dir / "tunekit.json").read_text())["options"]["grad_accum"] == 1
    assert auto.metrics["steps"] == 3  # 12 rows / batch 4, one row group per update
    given = tunekit.finetune(chat_rows, output_dir=str(tmp_path / "given"), grad_accum=3, **opts)
    assert json.loads((given.output_dir / "tunekit.json").read_text())["options"]["grad_accum"] == 3
    assert given.metrics["steps"] == 1


def test_accumulated_micro_batches_run_as_one_forward_with_the_same_update(tiny_model_dir, chat_rows, tmp_path,
                                                                          monkeypatch):
    """On CPU an update's micro-batches go through fewer, larger forwards (here one of 6 rows for
    2 x 3): the same number of updates and the same trained weights as accumulating them."""
    from safetensors.torch import load_file

    plan = importlib.import_module("tunekit.plan")  # the module, whatever tunekit.plan is

    opts = dict(base=str(tiny_model_dir), method="lora", eval_split=0, epochs=2, batch_size=2, grad_accum=3,
                dropout=0.0, progress=False)
    merged = tunekit.finetune(chat_rows, output_dir=str(tmp_path / "merged"), **opts)
    assert merged.metrics["rows_per_forward"] == 6
    assert merged.metrics["steps"] == 4  # 12 rows / 6 per update x 2 epochs
    monkeypatch.setattr(plan, "rows_per_forward", lambda opts, *args: (opts.batch_size, None))
    accumulated = tunekit.finetune(chat_rows, output_dir=str(tmp_path / "accumulated"), **opts)
    assert accumulated.metrics["rows_per_forward"] == 2 and accumulated.metrics["steps"] == 4
    a = load_file(merged.output_dir / "adapter_model.safetensors")
    b = load_file(accumulated.output_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = [k for k in a if "lora_B" in k and a[k].abs().max() > 0]
    assert moved, "the adapters were trained"
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert merged.metrics["train_loss_last"] == pytest.approx(accumulated.metrics["train_loss_last"], rel=1e-4)


def test_rows_per_forward_grow_to_about_1k_tokens_when_they_fit(tiny_model_dir, monkeypatch):
    import sys

    plan = importlib.import_module("tunekit.plan")  # the module, whatever tunekit.plan is
    from tunekit.options import Options
    from tunekit.placement import Placement, placement

    def rows(length: int) -> list[dict]:
        return [{"input_ids": [1] * length}] * 20

    cpu = placement("cpu")
    opts = Options(base=str(tiny_model_dir), method="lora", batch_size=4, grad_accum=4)

    def per_forward(enc, **changes):
        rows, peak = plan.rows_per_forward(Options(**{**vars(opts), **changes}), tiny_model_dir, enc, cpu)
        assert (peak is not None) == (rows > 4), "an estimate comes with larger forwards, and only with them"
        return rows

    # A divisor of the 16-row update, as many rows as ~1024 tokens allow, never fewer than batch_size.
    assert per_forward(rows(60)) == 16
    assert per_forward(rows(100)) == 8
    assert per_forward(rows(300)) == 4
    assert per_forward(rows(100), grad_accum=3) == 6  # 12-row updates: two forwards of 6
    # Not without accumulation, in memory mode (checkpointing, QLoRA on CPU), or on a GPU.
    assert per_forward(rows(60), grad_accum=1) == 4
    assert per_forward(rows(60), gradient_checkpointing=True) == 4
    assert per_forward(rows(60), method="qlora") == 4
    assert plan.rows_per_forward(opts, tiny_model_dir, rows(60), Placement("cuda", None)) == (4, None)
    # Nor when the estimate does not fit (tunekit.estimate the name is the function, hence sys.modules).
    monkeypatch.setattr(sys.modules["tunekit.estimate"], "free_memory", lambda device=None: 10 * 2**20)
    assert per_forward(rows(60)) == 4
    # Nor when there is no estimate: a speed-up never stops a run.
    monkeypatch.setattr(sys.modules["tunekit.estimate"], "estimate", lambda *a, **k: 1 / 0)
    assert per_forward(rows(60)) == 4


def test_peak_rss_is_the_processs_own_not_its_parents():
    """ru_maxrss survives exec: a child started from a large process (compare's runs, benchmark
    children, a pytest process that has loaded models) would report the parent's size."""
    import subprocess
    import sys

    from tunekit.train import peak_rss_bytes

    ballast = bytearray(600 << 20)  # touched: 600 MB resident in this (parent) process
    assert peak_rss_bytes() > 600 << 20
    code = ("import resource; from tunekit.train import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    own, inherited = int(out[0]), int(out[1])
    del ballast
    assert own < 300 << 20 < 600 << 20 < inherited


def test_a_templates_missing_eos_is_added_and_set(tiny_model_dir):
    """The SmolLM2 vocabulary lacks Llama 3's tokens: prepare_tokenizer adds them and then sets the
    template's eos, which could not be set before it existed."""
    from tunekit.train import prepare_tokenizer

    _, tokenizer, template, missing = prepare_tokenizer(str(tiny_model_dir), "llama-3")
    assert template.eos == "<|eot_id|>" and "<|eot_id|>" in missing
    assert tokenizer.eos_token == template.eos
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == tokenizer.eos_token_id != tokenizer.unk_token_id
    assert len(tokenizer.encode("<|eot_id|>", add_special_tokens=False)) == 1


def test_renamed_maps_old_keywords_with_a_warning():
    from tunekit.options import renamed

    with pytest.warns(FutureWarning, match=r"^estimate\(\): seq_len is deprecated; use max_length$"):
        assert renamed({"seq_len": 5, "r": 8}, {"seq_len": "max_length"}, where="estimate()") == \
            {"max_length": 5, "r": 8}
    assert renamed({"r": 8}, {"seq_len": "max_length"}, where="estimate()") == {"r": 8}
    with pytest.raises(ConfigError, match="max_length"):
        renamed({"seq_len": 5, "max_length": 6}, {"seq_len": "max_length"}, where="estimate()")
