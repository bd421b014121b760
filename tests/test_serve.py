"""AdapterPool: many adapters over one base, switched per request, against a real hub."""

from __future__ import annotations

import threading
import uuid

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)

import tunekit
from tunekit.errors import ConfigError, ModelError

FAST = dict(epochs=1, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_split=4, lr=0.01)
PROMPT = "What is 3 plus 3?"
GEN = dict(max_new_tokens=6)


def rows(answer) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": answer(i)}]} for i in range(12)]


@pytest.fixture(scope="module", autouse=True)
def online(hub_online):
    yield


@pytest.fixture(scope="module")
def adapters(hub, tiny_base, tmp_path_factory) -> dict[str, str]:
    """Two adapters trained on different answers; "b" is private (the pool's token reads it)."""
    out = tmp_path_factory.mktemp("runs")
    data = {"a": lambda i: f"{i} plus {i} is {2 * i}.", "b": lambda i: f"Bananas are yellow, number {i}."}
    repos = {}
    for key, answer in data.items():
        result = tunekit.finetune(rows(answer), base=tiny_base, output_dir=str(out / key), **FAST)
        repos[key] = f"{hub.user}/pool-{key}-{uuid.uuid4().hex[:6]}"
        result.push(repos[key], token=hub.token, private=key == "b")
    return repos


@pytest.fixture(scope="module")
def alone(hub, adapters) -> dict[str, str]:
    """Each adapter's greedy answer when loaded alone with tunekit.load."""
    return {k: tunekit.load(repo, token=hub.token).chat(PROMPT, **GEN) for k, repo in adapters.items()}


def test_one_base_many_adapters_each_answering_like_it_does_alone(hub, tiny_base, adapters, alone, monkeypatch):
    from transformers import AutoModelForCausalLM

    loads = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    pool = tunekit.AdapterPool(tiny_base, token=hub.token)
    base_reply = pool.chat(PROMPT, **GEN)
    q_proj = pool.model.model.layers[0].self_attn.q_proj.weight
    ptr = q_proj.data_ptr()
    assert pool.add(adapters["a"]) == adapters["a"]
    pool.add(adapters["b"], name="b")
    assert pool.adapters == [adapters["a"], "b"]

    replies = {"a": pool.chat(PROMPT, adapter=adapters["a"], **GEN), "b": pool.chat(PROMPT, adapter="b", **GEN)}
    assert replies["a"] != replies["b"], "the two adapters must answer differently for this test to mean anything"
    assert replies == alone
    assert pool.chat(PROMPT, **GEN) == base_reply  # adapter=None: the base alone, adapters off
    assert "".join(pool.chat(PROMPT, adapter="b", stream=True, **GEN)).strip() == alone["b"]

    # The base weights were read once and are shared: the same tensor under every adapter.
    assert len(loads) == 1
    layer = pool.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.data_ptr() == ptr
    assert {"adapter0", "adapter1"} <= set(layer.lora_A)

    pool.remove("b")
    assert pool.adapters == [adapters["a"]]
    with pytest.raises(ModelError, match="no adapter 'b'"):
        pool.remove("b")
    pool.remove(adapters["a"])
    assert pool.adapters == [] and pool.model.model.layers[0].self_attn.q_proj.weight.data_ptr() == ptr
    assert pool.chat(PROMPT, **GEN) == base_reply


def test_lru_eviction_and_repull_on_demand(hub, tiny_base, adapters, alone, monkeypatch):
    from tunekit import hub as hublib

    pulls = []
    original = hublib.download

    def counting(repo_id, **kwargs):
        pulls.append(repo_id)
        return original(repo_id, **kwargs)

    monkeypatch.setattr(hublib, "download", counting)
    pool = tunekit.AdapterPool(tiny_base, max_loaded=1, token=hub.token)
    pool.add(adapters["a"], name="a")
    pool.add(adapters["b"], name="b")
    assert pool.adapters == ["b"]  # "a" was least recently used
    assert len(pool.model.peft_config) == 1
    assert pool.chat(PROMPT, adapter="a", **GEN) == alone["a"]  # pulled again, "b" evicted
    assert pool.adapters == ["a"]
    assert pulls == [adapters["a"], adapters["b"], adapters["a"]]
    assert pool.chat(PROMPT, adapter="b", **GEN) == alone["b"]

    # An adapter never added is pulled on first use (auto_add), and refused without it.
    unnamed = tunekit.AdapterPool(tiny_base, token=hub.token, auto_add=False)
    with pytest.raises(ModelError, match="no adapter"):
        unnamed.chat(PROMPT, adapter=adapters["a"])
    with pytest.raises(ConfigError):
        tunekit.AdapterPool(tiny_base, max_loaded=0)


def test_concurrent_requests_keep_their_adapter(hub, tiny_base, adapters, alone):
    pool = tunekit.AdapterPool(tiny_base, token=hub.token)
    pool.add(adapters["a"], name="a")
    pool.add(adapters["b"], name="b")
    results: dict[int, str] = {}

    def ask(i: int):
        results[i] = pool.chat(PROMPT, adapter="ab"[i % 2], **GEN)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: alone["ab"[i % 2]] for i in range(6)}


def test_adapters_for_another_base_are_refused(hub, tiny_base, tiny_model_dir, adapters, tmp_path):
    import json
    import shutil

    from huggingface_hub import snapshot_download

    pool = tunekit.AdapterPool(tiny_base, token=hub.token)
    with pytest.raises(ModelError, match="full model"):
        pool.add(tiny_base)
    # The same weights under another base name: refused by name, accepted with force=True.
    renamed = tmp_path / "renamed"
    shutil.copytree(snapshot_download(adapters["a"], token=hub.token), renamed)
    cfg = json.loads((renamed / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/else"
    (renamed / "adapter_config.json").write_text(json.dumps(cfg))
    (renamed / "tunekit.json").unlink()
    with pytest.raises(ModelError, match="made for base 'someone/else'"):
        pool.add(str(renamed))
    assert pool.adapters == []
    pool.add(str(renamed), name="forced", force=True)
    assert pool.adapters == ["forced"]
    # Shapes that do not fit are refused even with force=True, and leave the pool as it was.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    small = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    wrong = get_peft_model(small, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrong.peft_config["default"].base_model_name_or_path = tiny_base
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ModelError, match="does not fit"):
        pool.add(str(tmp_path / "wrong"), force=True)
    assert pool.adapters == ["forced"]
