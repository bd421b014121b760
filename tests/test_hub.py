"""Pushing runs to and loading them by name from a real hub (`tunekit hub serve`), driven through
tunekit and the real huggingface_hub client: no mocked HTTP."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)

import tunekit
from tunekit.errors import HubError, ModelError

# One epoch of 8 rows (4 held out) at a high learning rate: seconds, and enough to change the
# tiny random model's greedy answers.
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
def pushed(hub, tiny_base, tmp_path_factory):
    """Run A pushed with ``result.push(token=…)``, then run B pushed to the same repo by
    ``finetune(push_to=…)`` (token from HF_TOKEN): two commits on one repo."""
    out = tmp_path_factory.mktemp("runs")
    repo = f"{hub.user}/adder-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_TOKEN", raising=False)
        a = tunekit.finetune(rows(lambda i: f"{i} plus {i} is {2 * i}."), base=tiny_base,
                             output_dir=str(out / "a"), **FAST)
        url = a.push(repo, token=hub.token)
        first = hub.api.list_repo_commits(repo)[0].commit_id
        mp.setenv("HF_TOKEN", hub.token)
        b = tunekit.finetune(rows(lambda i: f"Bananas are yellow, number {i}."), base=tiny_base,
                             output_dir=str(out / "b"), push_to=repo, **FAST)
    return dict(repo=repo, url=url, a=a, b=b, first=first)


def test_push_uploads_the_run_in_one_commit_and_history_is_kept(hub, pushed):
    repo = pushed["repo"]
    assert pushed["url"].endswith(repo)
    assert pushed["b"].url is not None and pushed["b"].repo_id == repo
    files = set(hub.api.list_repo_files(repo))
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "README.md", "metrics.json", "loss.png", "tunekit.json"):
        assert name in files, name
    assert not [f for f in files if f.startswith("checkpoints/") or f.endswith((".bin", ".pt", ".pkl"))]
    commits = hub.api.list_repo_commits(repo)
    assert len(commits) == 3  # .gitattributes, run A, run B
    assert commits[1].commit_id == pushed["first"]
    assert all(c.title.startswith("tunekit: lora fine-tune") for c in commits[:2])
    adapter_cfg = json.loads(Path(hub.api.hf_hub_download(repo, "adapter_config.json")).read_text())
    assert adapter_cfg["base_model_name_or_path"] == f"{hub.user}/tiny-base"


def test_card_metadata_and_body(hub, pushed):
    from huggingface_hub import ModelCard

    repo = pushed["repo"]
    data = hub.api.model_info(repo).card_data
    assert data.base_model == f"{hub.user}/tiny-base"
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert {"tunekit", "trl", "sft", "lora"} <= set(data.tags)
    assert data.license == "mit"  # inherited from the base repo's card
    assert data.datasets is None  # the data was a list, not a Hub dataset
    (result,) = data.eval_results
    assert result.metric_type == "loss" and result.metric_value == pytest.approx(
        pushed["b"].metrics["eval_loss_best"], abs=1e-4)
    card = ModelCard.load(repo, token=hub.token)
    card.validate()  # the hub's /api/validate-yaml accepts it
    body = card.text
    assert f'tunekit.load("{repo}")' in body and "AutoPeftModelForCausalLM" in body
    for fact in ("LoRA r / alpha | 16 / 32", "learning rate | 0.01", "chat template | `chatml`",
                 "assistant turns only", "8 train, 4 eval", f"[`{hub.user}/tiny-base`]"):
        assert fact in body, fact


def test_card_names_hub_datasets_and_omits_local_bases():
    from tunekit import card
    from tunekit.record import DataInfo, Metrics, RunInfo

    run = RunInfo(base="/some/folder", base_path="/some/folder", method="qlora", adapter=True,
                  data=DataInfo(source="alice/podcasts", hub_dataset="alice/podcasts"), base_license="apache-2.0")
    data = card.card_metadata(run, Metrics(eval_loss_best=1.5), model_name="m").to_dict()
    assert data["datasets"] == ["alice/podcasts"]
    assert "base_model" not in data  # the Hub's model tree only understands repo ids
    assert {"qlora", "lora"} <= set(data["tags"]) and data["license"] == "apache-2.0"
    assert data["model-index"][0]["results"][0]["dataset"]["type"] == "alice/podcasts"


def test_load_by_name_chats_like_the_local_run_and_revisions_pick_old_adapters(pushed):
    a, b = pushed["a"], pushed["b"]
    latest = tunekit.load(pushed["repo"])
    old = tunekit.load(pushed["repo"], revision=pushed["first"])
    assert latest.adapter and latest.repo_id == pushed["repo"]
    reply_a, reply_b = a.chat(PROMPT, **GEN), b.chat(PROMPT, **GEN)
    assert reply_a != reply_b, "the two runs must answer differently for this test to mean anything"
    assert latest.chat(PROMPT, **GEN) == reply_b
    assert old.chat(PROMPT, **GEN) == reply_a
    # The base was resolved by Hub id, not through the folder the run happened to use.
    assert latest.resolve_base().name == pushed["a"].base


def test_full_model_repo_loads(tiny_base, tiny_model_dir):
    remote = tunekit.load(tiny_base)
    assert not remote.adapter and remote.method == "full"
    assert remote.chat(PROMPT, **GEN) == tunekit.load(tiny_model_dir).chat(PROMPT, **GEN)


def _plain_adapter(base_dir, out: Path, *, base_name: str, hidden: int | None = None,
                   targets=("q_proj", "v_proj")) -> Path:
    """A LoRA adapter made with PEFT alone (random, so it changes answers). With ``hidden``, it is
    made on a differently shaped model but still claims ``base_name``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    if hidden is None:
        model = AutoModelForCausalLM.from_pretrained(base_dir)
    else:
        model = AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                  init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(out)
    return out


def _upload(hub, folder: Path, *, private: bool = False, token: str | None = None) -> str:
    from huggingface_hub import HfApi

    repo = f"{hub.user}/plain-{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=hub.url, token=token or hub.token)
    api.create_repo(repo, private=private)
    api.upload_folder(folder_path=str(folder), repo_id=repo)
    return repo


def test_plain_peft_adapter_repo_made_without_tunekit(hub, tiny_base, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit import chat as chatlib

    folder = _plain_adapter(tiny_model_dir, tmp_path / "plain", base_name=tiny_base)
    assert not (folder / "tokenizer_config.json").exists()  # the base's tokenizer must be used
    repo = _upload(hub, folder)
    loaded = tunekit.load(repo)
    assert loaded.adapter and loaded.base == tiny_base and loaded.template is None
    # The same adapter, put together by hand with PEFT, answers the same.
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = chatlib.generate(by_hand, tokenizer, [{"role": "user", "content": PROMPT}], **GEN)
    assert loaded.chat(PROMPT, **GEN) == expected
    assert loaded.chat(PROMPT, **GEN, use_adapter=False) != expected


def test_adapter_over_the_embedded_base_falls_back_to_the_embedded_copy(hub, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunekit import models

    # Only layer 0's q_proj is adapted, so a one-layer model with the same shapes can make it.
    config = AutoConfig.from_pretrained(models.embedded_model_dir())
    config.num_hidden_layers = 1
    small = AutoModelForCausalLM.from_config(config)
    small.save_pretrained(tmp_path / "one-layer")
    folder = _plain_adapter(tmp_path / "one-layer", tmp_path / "smol-adapter", base_name=models.EMBEDDED_ID,
                            targets=("model.layers.0.self_attn.q_proj",))
    repo = _upload(hub, folder)
    loaded = tunekit.load(repo)
    base = loaded.resolve_base()  # this hub has no HuggingFaceTB/SmolLM2-135M-Instruct repo
    assert base.embedded and base.path == models.embedded_model_dir()
    assert isinstance(loaded.chat("Hi!", max_new_tokens=3), str)


def test_private_repo_needs_a_token_that_can_read_it(hub, tiny_base, tiny_model_dir, tmp_path):
    # A private adapter over a private base: the token must reach both downloads.
    private_base = f"{hub.user}/tiny-base-private"
    hub.api.create_repo(private_base, private=True)
    hub.api.upload_folder(folder_path=str(tiny_model_dir), repo_id=private_base)
    folder = _plain_adapter(tiny_model_dir, tmp_path / "private", base_name=private_base)
    repo = _upload(hub, folder, private=True)
    with pytest.raises(HubError, match="token") as err:
        tunekit.load(repo)
    assert err.value.repo_id == repo
    bob = hub.add_user(f"bob{uuid.uuid4().hex[:4]}")
    with pytest.raises(HubError, match="not found"):
        tunekit.load(repo, token=bob)
    loaded = tunekit.load(repo, token=hub.token)
    assert isinstance(loaded.chat(PROMPT, **GEN), str)
    assert loaded.resolve_base().name == private_base
    assert hub.token not in repr(loaded)


def test_not_found_and_bad_names(hub):
    with pytest.raises(HubError, match="was not found on the Hub"):
        tunekit.load(f"{hub.user}/no-such-adapter")
    with pytest.raises(HubError, match="no revision"):
        tunekit.load(f"{hub.user}/tiny-base", revision="no-such-branch")
    with pytest.raises(HubError, match="valid Hub repo id"):
        tunekit.load("not/a/folder/or/repo")


def test_adapter_for_another_base_is_refused(hub, tiny_base, tiny_model_dir, tmp_path):
    # Made on a model with hidden size 32, but its config claims the tiny base (hidden 64).
    folder = _plain_adapter(tiny_model_dir, tmp_path / "wrong", base_name=tiny_base, hidden=32)
    loaded = tunekit.load(_upload(hub, folder))
    with pytest.raises(ModelError, match="does not fit base"):
        loaded.chat(PROMPT, **GEN)


def test_missing_base_online_and_offline(hub, tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = _plain_adapter(tiny_model_dir, tmp_path / "orphan", base_name=f"{hub.user}/never-uploaded")
    repo = _upload(hub, folder)
    with pytest.raises(ModelError, match="was not found on the Hub"):
        tunekit.load(repo).chat(PROMPT, **GEN)
    # Offline: the adapter comes from the cache, its base is nowhere.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = tunekit.load(repo)
    with pytest.raises(ModelError, match="cannot be reached"):
        cached.chat(PROMPT, **GEN)


def test_pickled_weights_are_never_downloaded(hub, tiny_base, tiny_model_dir, tmp_path):
    folder = _plain_adapter(tiny_model_dir, tmp_path / "mixed", base_name=tiny_base)
    # A pickle that would run code if anything unpickled it.
    (folder / "adapter_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    (folder / "training_args.bin").write_bytes(b"not for you")
    loaded = tunekit.load(_upload(hub, folder))
    assert not list(Path(loaded.output_dir).glob("*.bin"))
    assert isinstance(loaded.chat(PROMPT, **GEN), str)

    only_pickle = tmp_path / "only-pickle"
    only_pickle.mkdir()
    shutil.copy(tiny_model_dir / "config.json", only_pickle)
    (only_pickle / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(HubError, match="no safetensors"):
        tunekit.load(_upload(hub, only_pickle))


def test_token_never_reaches_pushed_files_or_logs(hub, pushed, tmp_path, caplog):
    from huggingface_hub import snapshot_download

    caplog.set_level(logging.DEBUG)
    everything = Path(snapshot_download(pushed["repo"], token=hub.token, cache_dir=tmp_path / "all"))
    for path in everything.rglob("*"):
        if path.is_file():
            assert hub.token.encode() not in path.read_bytes(), path.name
    repo = f"{hub.user}/again-{uuid.uuid4().hex[:6]}"
    pushed["a"].push(repo, token=hub.token, private=True)
    tunekit.load(repo, token=hub.token).chat(PROMPT, max_new_tokens=2)
    assert caplog.records and hub.token not in caplog.text


def test_push_errors_are_clear(hub, pushed):
    with pytest.raises(HubError, match="401|refused|token"):
        pushed["a"].push(f"{hub.user}/denied", token="hf_" + "x" * 34)
    bob = hub.add_user(f"bob{uuid.uuid4().hex[:4]}")
    with pytest.raises(HubError) as err:
        pushed["a"].push(pushed["repo"], token=bob)  # alice's repo
    assert err.value.repo_id == pushed["repo"]


def test_push_checks_the_repo_id_and_uploads_only_safe_files(hub, pushed):
    from tunekit import hub as hublib

    with pytest.raises(HubError, match="not a valid repo id") as err:
        pushed["a"].push("not a/valid//id", token=hub.token)
    assert err.value.repo_id == "not a/valid//id"
    files = hublib.files_to_push(pushed["a"].output_dir)
    assert "adapter_model.safetensors" in files and "tunekit.json" in files
    assert not [name for name in files if name.startswith("checkpoints/") or name.endswith((".bin", ".pt"))]
    assert hublib.local_folder(pushed["a"].output_dir) == (pushed["a"].output_dir, None)


def test_a_cached_base_without_its_tokenizer_is_completed_from_the_hub(hub, tiny_model_dir, tmp_path):
    """What a plain AutoModelForCausalLM.from_pretrained leaves in the cache (config and
    weights, no tokenizer) must not make the base unusable for good (issue 17)."""
    from huggingface_hub import hf_hub_download

    from tunekit import models

    base = f"{hub.user}/tiny-base-{uuid.uuid4().hex[:6]}"
    hub.api.create_repo(base)
    hub.api.upload_folder(folder_path=str(tiny_model_dir), repo_id=base)
    for name in ("config.json", "model.safetensors"):
        hf_hub_download(base, name, token=hub.token)
    partial = Path(hf_hub_download(base, "config.json", token=hub.token)).parent
    assert not (partial / "tokenizer_config.json").exists()
    assert models.missing_parts(partial) == ["tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model)"]
    # A plain PEFT adapter ships no tokenizer: chatting needs the base's.
    loaded = tunekit.load(_upload(hub, _plain_adapter(tiny_model_dir, tmp_path / "a", base_name=base)))
    assert isinstance(loaded.chat(PROMPT, **GEN), str)
    resolved = models.resolve_base(base)
    assert resolved.path == partial and not models.missing_parts(resolved.path)


def test_missing_parts_of_a_sharded_snapshot(tmp_path):
    from tunekit import models

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert models.missing_parts(tmp_path) == ["weights (model-00002-of-00002.safetensors)"]
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert models.missing_parts(tmp_path) == []
