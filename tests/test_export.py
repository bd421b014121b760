"""Merging adapters into their base and exporting GGUF: the merged folder loads with plain
transformers, the GGUF loads back with transformers, and both answer like the adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tunekit
from tunekit.errors import ConfigError, ModelError

FAST = dict(epochs=2, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=2, lr=0.01, r=8,
            dropout=0.0)
PROMPTS = ["What is 3 plus 3?", "What is 7 plus 7?", "What is 10 plus 10?"]
GEN = dict(max_new_tokens=8)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    return tunekit.finetune(rows, base=str(tiny_model_dir), output_dir=str(tmp_path_factory.mktemp("run") / "lora"),
                            method="lora", **FAST)


@pytest.fixture(scope="module")
def adapter_answers(run) -> list[str]:
    return [run.chat(p, **GEN) for p in PROMPTS]


@pytest.fixture(scope="module")
def adapter_logits(run):
    model, tokenizer = run._model()
    return _logits(model, tokenizer)


def _logits(model, tokenizer):
    """Next-token logits after each prompt: a finer check than greedy answers, which a tiny random
    model can make look alike."""
    import torch

    from tunekit import chat

    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            inputs = chat.encode_prompt(tokenizer, chat.to_messages(p), model.device)
            out.append(model(**inputs).logits[0, -1].float())
    return torch.stack(out)


def _greedy(model, tokenizer) -> list[str]:
    from tunekit import chat

    return [chat.generate(model, tokenizer, chat.to_messages(p), **GEN) for p in PROMPTS]


def test_merged_model_loads_without_peft_and_answers_like_the_adapter(run, adapter_answers, adapter_logits, tmp_path):
    import torch

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run.merge(tmp_path / "merged")
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files and "chat_template.jinja" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in model.state_dict())
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == run._model()[1].chat_template
    assert _greedy(model, tokenizer) == adapter_answers
    torch.testing.assert_close(_logits(model, tokenizer), adapter_logits, rtol=1e-4, atol=1e-4)
    # Reopened by tunekit, it is a full model.
    assert tunekit.load(out).adapter is False
    with pytest.raises(ConfigError, match="not empty"):
        run.merge(out)


def test_gguf_loads_back_in_transformers_with_the_same_answers_and_tokenizer(run, adapter_answers, adapter_logits,
                                                                           tmp_path):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = run.export_gguf(tmp_path / "gguf" / "model.f32.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    _, tokenizer = run._model()
    assert template == tokenizer.chat_template
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    for text in ["What is 3 plus 3?", "<|im_start|>user\nhello 1234 wörld<|im_end|>\n", "  spaces\tand\nlines"]:
        assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert gguf_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert _greedy(model, gguf_tokenizer) == adapter_answers
    torch.testing.assert_close(_logits(model, gguf_tokenizer), adapter_logits, rtol=1e-4, atol=1e-4)

    # F16 halves the matrices and still loads; the default dtype.
    half = run.export_gguf(tmp_path / "gguf" / "model.f16.gguf")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    model16 = AutoModelForCausalLM.from_pretrained(half.parent, gguf_file=half.name)
    torch.testing.assert_close(_logits(model16, gguf_tokenizer), adapter_logits, rtol=0, atol=0.05)
    with pytest.raises(ConfigError, match="already exists"):
        run.export_gguf(half)


def test_qlora_adapters_merge_into_the_dequantised_base_with_a_warning(run, adapter_answers, tmp_path):
    import shutil

    # The same adapter weights recorded as QLoRA: the merge path is what differs, not the file format.
    qlora = tmp_path / "qlora-run"
    shutil.copytree(run.output_dir, qlora, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((qlora / "tunekit.json").read_text())
    info["method"] = "qlora"
    (qlora / "tunekit.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="4-bit"):
        out = tunekit.load(qlora).merge(tmp_path / "merged-qlora")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("quant" in k or "absmax" in k for k in model.state_dict())
    assert _greedy(model, AutoTokenizer.from_pretrained(out)) == adapter_answers
    assert "4-bit" in (out / "README.md").read_text()


def test_clear_errors_for_what_cannot_be_merged_or_exported(run, tmp_path, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunekit.gguf import write_gguf

    with pytest.raises(ModelError, match="nothing to merge"):
        tunekit.load(tiny_model_dir).merge(tmp_path / "m")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ModelError, match="Llama-architecture"):
        write_gguf(gpt2, run._model()[1], tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="f16, f32"):
        run.export_gguf(tmp_path / "x.gguf", dtype="q4")


def test_cli_merge_and_export(run, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True, text=True,
                              timeout=300)

    done = cli("merge", str(run.output_dir), str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "merged" / "model.safetensors").exists()
    done = cli("export", str(run.output_dir), "--format", "gguf", "-o", str(tmp_path / "m.gguf"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.gguf").stat().st_size > 1_000_000
    done = cli("export", str(run.output_dir), "-o", str(tmp_path / "m.gguf"))
    assert done.returncode == 1 and done.stderr.startswith("error:") and "already exists" in done.stderr


def test_merge_out_dir_is_the_deprecated_name_of_output_dir(run, tmp_path):
    with pytest.warns(FutureWarning, match="out_dir is deprecated; use output_dir"):
        out = run.merge(out_dir=tmp_path / "old-name")
    assert out == tmp_path / "old-name" and (out / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="output_dir= only"):
        run.merge(tmp_path / "a", out_dir=tmp_path / "b")
    with pytest.raises(TypeError, match="output_dir"):
        run.merge()


def test_the_result_carries_typed_records_and_how_to_load(run):
    from tunekit.record import Metrics, RunInfo

    assert isinstance(run.run, RunInfo) and isinstance(run.metrics, Metrics)
    assert run.run.method == run.run["method"] == "lora" and run.metrics.steps == run.metrics["steps"] > 0
    opened = tunekit.load(run.output_dir, token="hf_secret_token", device="cpu", base="some/other-base")
    assert (opened.token, opened.device, opened.base_override) == ("hf_secret_token", "cpu", "some/other-base")
    assert opened.trust_remote_code is None  # a local run keeps the choice it was trained with
    assert "hf_secret_token" not in repr(opened)


def test_an_adapter_that_does_not_fit_says_which_adapter_which_base_and_the_fix(run):
    from tunekit import adapters, models

    with pytest.raises(ModelError) as err:
        adapters.check_fits({}, run.output_dir, adapter="alice/notes-lora", base="bob/other-base")
    message = str(err.value)
    assert message.startswith("the adapter 'alice/notes-lora' does not fit base 'bob/other-base': ")
    assert "no such linear layer" in message and "the base it was trained on" in message
    assert models.has_tokenizer(run.output_dir)
