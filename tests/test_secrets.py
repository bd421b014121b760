"""Nothing secret or local leaves the machine (issue 17, items 6 and 12): a token given in
``training_args`` is redacted from every file training writes and from everything pushed, and a
push names a local base, data file or output folder, never its path. Driven through
``tunekit.finetune``, ``push`` and ``push_space`` against a real ``tunekit hub serve``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from hub_fixtures import hub  # noqa: F401  (fixture)

import tunekit
from tunekit import record

SECRET = "hf_secret123"


@pytest.fixture(scope="module", autouse=True)
def online(hub_online):
    yield


@pytest.fixture(scope="module")
def trained(hub, tiny_model_dir, tmp_path_factory):
    """A one-step LoRA run on the tiny model as a local folder, from a jsonl file, given a
    token in training_args; pushed as a model and as a Space."""
    root = tmp_path_factory.mktemp("secret-run")
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n" for i in range(8)))
    result = tunekit.finetune(str(data), base=str(tiny_model_dir), output_dir=str(root / "out"), eval_split=2,
                              max_length=64, progress=False,
                              training_args={"hub_token": SECRET, "max_steps": 1})
    repo = f"{hub.user}/secret-{uuid.uuid4().hex[:6]}"
    result.push(repo, token=hub.token)
    space_id = f"{repo}-demo"
    result.push_space(space_id, token=hub.token)
    return dict(result=result, repo=repo, space=space_id, root=root, data=data, base=tiny_model_dir)


def _files(folder: Path, skip=()) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not any(p.match(s) for s in skip)]


def _pushed(hub, repo: str, repo_type: str, cache: Path) -> list[Path]:
    from huggingface_hub import snapshot_download

    return _files(Path(snapshot_download(repo, repo_type=repo_type, token=hub.token, cache_dir=cache)))


def test_the_token_is_in_no_file_of_the_output_folder(trained):
    out = Path(trained["result"].output_dir)
    files = _files(out)
    assert any(p.name == "tunekit.json" for p in files) and any(p.name == "README.md" for p in files)
    leaks = [p.relative_to(out).as_posix() for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks
    # The option is still recorded, so the record says one was given.
    run = json.loads((out / "tunekit.json").read_text())
    assert run["options"]["training_args"] == {"hub_token": record.REDACTED, "max_steps": 1}


def test_the_token_is_in_no_checkpoint(trained):
    out = Path(trained["result"].output_dir)
    assert not [p for p in _files(out / "checkpoints") if SECRET.encode() in p.read_bytes()]


def test_the_token_is_in_no_pushed_blob(hub, trained, tmp_path):
    pushed = (_pushed(hub, trained["repo"], "model", tmp_path / "m")
              + _pushed(hub, trained["space"], "space", tmp_path / "s"))
    assert {"tunekit.json", "README.md", "tunekit_space.json", "adapter_config.json"} <= {p.name for p in pushed}
    assert not [p.name for p in pushed if SECRET.encode() in p.read_bytes()]
    # What the hub stored on its disk (blobs, metadata), whatever the client shows.
    assert not [p.name for p in _files(hub.data_dir) if SECRET.encode() in p.read_bytes()]


def test_pushed_files_name_local_folders_never_their_paths(hub, trained, tmp_path):
    home = str(Path.home())
    paths = {str(trained["root"]), str(trained["base"]), str(trained["data"]), home}
    pushed = (_pushed(hub, trained["repo"], "model", tmp_path / "m")
              + _pushed(hub, trained["space"], "space", tmp_path / "s"))
    leaks = [(p.name, s) for p in pushed for s in paths if s.encode() in p.read_bytes()]
    assert not leaks
    commits = hub.api.list_repo_commits(trained["repo"])
    assert not [c.title for c in commits if any(s in c.title for s in paths)]
    by_name = {p.name: p for p in _pushed(hub, trained["repo"], "model", tmp_path / "m")}
    space_files = {p.name: p for p in _pushed(hub, trained["space"], "space", tmp_path / "s")}
    run = json.loads(by_name["tunekit.json"].read_text())
    assert run["base"] == run["base_path"] == Path(trained["base"]).name
    assert run["data"]["source"] == "chats.jsonl" and run["options"]["output_dir"] == "out"
    assert json.loads(by_name["metrics.json"].read_text())["best_checkpoint"] in (None, "checkpoint-1")
    assert json.loads(by_name["adapter_config.json"].read_text())["base_model_name_or_path"] == "tiny-llama"
    space = json.loads(space_files["tunekit_space.json"].read_text())
    assert space["base"] == space["adapters"][0]["base"] == "tiny-llama"
    assert "`tiny-llama` (a local folder)" in by_name["README.md"].read_text()
    assert "`tiny-llama`" in space_files["README.md"].read_text()
    header = yaml.safe_load(space_files["README.md"].read_text().split("---")[1])
    assert header["models"] == [trained["repo"]]  # a local base's name is no Hub id
    assert "file://" not in space_files["README.md"].read_text()


def test_the_local_record_keeps_its_paths_to_reload(trained):
    result = trained["result"]
    run = record.RunInfo.load(result.output_dir)
    assert run.base_path == str(trained["base"]) and run.data.source == str(trained["data"])
    assert result.resolve_base().path == Path(trained["base"])
    assert isinstance(result.chat("What is 1 plus 1?", max_new_tokens=2), str)


@pytest.mark.parametrize("key, secret", [
    ("hub_token", True), ("token", True), ("api_key", True), ("wandb_api_key", True), ("password", True),
    ("client_secret", True), ("HF_TOKEN", True), ("push-to-hub-token", True), ("secret", True),
    ("pad_token", False), ("eos_token", False), ("max_new_tokens", False), ("train_tokens", False),
    ("trained_tokens_per_second", False), ("tokenizer", False), ("lora_key", False),
])
def test_secret_looking_keys(key, secret):
    assert record.is_secret_key(key) is secret


def test_redaction_reaches_any_depth_and_every_record(tmp_path):
    run = record.RunInfo(base="a/b", method="lora", adapter=True, options={
        "training_args": {"report_to": [{"wandb": {"api_key": "k1"}}], "hub_token": "t"},
        "note": "hf_" + "a" * 30, "max_length": 64})
    run.save(tmp_path)
    record.Metrics(extra={"auth": {"password": "p"}}).save(tmp_path)
    text = (tmp_path / "tunekit.json").read_text() + (tmp_path / "metrics.json").read_text()
    for secret in ("k1", '"t"', "hf_aaaa", '"p"'):
        assert secret not in text, secret
    again = record.RunInfo.load(tmp_path)
    assert again.options["max_length"] == 64
    assert again.options["training_args"]["report_to"] == [{"wandb": {"api_key": record.REDACTED}}]


def test_a_pushed_run_over_a_local_base_loads_with_base_given(trained):
    from tunekit.errors import ModelError

    with pytest.raises(ModelError, match="base"):
        tunekit.load(trained["repo"]).chat("What is 1 plus 1?", max_new_tokens=2)
    loaded = tunekit.load(trained["repo"], base=str(trained["base"]))
    assert isinstance(loaded.chat("What is 1 plus 1?", max_new_tokens=2), str)
