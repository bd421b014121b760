"""The plan: every default settled once, printable, and the dry run that builds it without weights."""

from __future__ import annotations

import importlib
import shutil

import pytest

from tunekit import train
from tunekit.errors import ConfigError
from tunekit.units import format_bytes

plan = importlib.import_module("tunekit.plan")  # the module, whatever tunekit.plan is
FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=4)


@pytest.fixture
def config_only_base(tiny_model_dir, tmp_path):
    """The tiny model's config and tokenizer without its weights: a dry run must not need them."""
    out = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert not list(out.glob("*.safetensors"))
    return out


def test_the_dry_run_plans_without_weights_and_writes_nothing(config_only_base, chat_rows, tmp_path):
    out = tmp_path / "never"
    p = train.plan(chat_rows, base=str(config_only_base), method="lora", output_dir=str(out), **FAST)
    assert isinstance(p, plan.Plan) and not out.exists()
    assert (p.method, p.method_choice, p.method_reason) == ("lora", None, "given")
    assert (p.grad_accum, p.rows_per_forward, p.train_rows, p.eval_rows, p.updates) == (1, 4, 8, 4, 2)
    assert p.lr == 2e-4 and p.lr_reason == "LoRA's default"
    assert p.gradient_checkpointing is False and p.optimizer == "adamw_torch_fused"
    assert p.placement.device == "cpu" and isinstance(p.fastpath, bool)
    assert p.options.method == "lora" and p.options.grad_accum == 1 and p.options.lr is None
    assert p.estimate is not None and p.peak_bytes == p.estimate.total_bytes > 0


def test_describe_lists_each_setting_its_value_and_why(config_only_base, chat_rows):
    p = train.plan(chat_rows, base=str(config_only_base), method="lora", **FAST)
    text = p.describe()
    lines = text.splitlines()
    names = ("data", "objective", "method", "learning rate", "batch", "updates", "rows per forward", "gradient checkpointing",
             "eval_steps", "optimizer", "placement", "fastpath", "peak memory (est.)")
    assert [line.split("  ")[0] for line in lines] == list(names)
    # Aligned: every value starts in the same column.
    assert len({len(line) - len(line[len(name):].lstrip()) for line, name in zip(lines, names)}) == 1
    assert format_bytes(p.peak_bytes) in text and "LoRA's default" in text and "grad_accum" in text
    assert lines[1].split() == ["objective", "sft", "from", "the", "data:", "chats"]


def test_auto_is_decided_in_the_plan_with_its_reason(config_only_base, chat_rows):
    p = train.plan(chat_rows, base=str(config_only_base), **FAST)
    assert p.method_choice["requested"] == "auto" and p.method == p.options.method == p.method_choice["method"]
    assert p.method_reason == f"auto: {p.method_choice['reason']}"
    assert p.peak_bytes == p.method_choice["estimated_peak_bytes"]
    assert p.method_reason in p.describe()


def test_merged_forwards_come_with_their_own_estimate(config_only_base, chat_rows):
    p = train.plan(chat_rows, base=str(config_only_base), method="lora", **{**FAST, "batch_size": 2, "grad_accum": 3})
    assert (p.rows_per_forward, p.accumulation_steps) == (6, 1)
    assert p.forward_estimate is not None and p.peak_bytes == p.forward_estimate.total_bytes
    assert p.forward_estimate.total_bytes > p.estimate.total_bytes  # 6 rows' activations, not 2
    assert "3 micro-batches of 2" in p.describe()


def test_given_values_are_kept_and_said_to_be_given(config_only_base, chat_rows):
    p = train.plan(chat_rows, base=str(config_only_base), method="full", lr=1e-5, eval_steps=3,
                   gradient_checkpointing=True, fastpath=False, **FAST)
    assert (p.lr, p.eval_steps, p.gradient_checkpointing, p.fastpath) == (1e-5, 3, True, False)
    assert p.lr_reason == p.eval_steps_reason == p.gradient_checkpointing_reason == "given"
    assert p.rows_per_forward == 4  # no larger forwards in memory mode


def test_default_grad_accum_says_why():
    from tunekit.options import Options

    assert plan.decide_grad_accum(Options(grad_accum=3), 10) == (3, "given")
    assert plan.decide_grad_accum(Options(), 1000)[0] == 4
    accum, why = plan.decide_grad_accum(Options(), 200)
    assert accum == 1 and "~100 updates" in why


def test_the_old_data_keyword_warns_and_still_works(config_only_base, chat_rows):
    with pytest.warns(FutureWarning, match="data_source is deprecated; use data"):
        p = train.plan(data_source=chat_rows, base=str(config_only_base), method="lora", **FAST)
    assert p.train_rows == 8
    with pytest.raises(ConfigError, match="data_source"):
        train.plan(chat_rows, data_source=chat_rows, method="lora", **FAST)
    # finetune takes the same alias (checked here before anything trains).
    with pytest.warns(FutureWarning, match="data_source is deprecated"), pytest.raises(ConfigError, match="metod"):
        train.finetune(data_source=chat_rows, metod="lora")
    with pytest.raises(TypeError, match="'data'"):
        train.finetune(method="lora")
