"""Data-parallel training in two CPU processes (gloo) through accelerate's launcher: the same
adapter as one process makes, a falling loss, and only rank 0 writes and pushes."""

from __future__ import annotations

import json

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)

import tunekit
from tunekit.launch import launch_train

OPTIONS = dict(method="lora", epochs=1, batch_size=2, grad_accum=1, max_length=128, progress=False, eval_split=2,
               lr=0.01, r=4, training_args={"max_steps": 4, "logging_steps": 1})


def _shapes(folder) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


def test_two_cpu_processes_train_one_adapter_and_only_rank0_writes_and_pushes(
        hub, tiny_model_dir, chat_rows, tmp_path, monkeypatch, capfd):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows * 2))
    for key, value in hub.env().items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    runs = tmp_path / "runs"
    repo = f"{hub.user}/ddp-lora"
    options = dict(OPTIONS, base=str(tiny_model_dir), output_dir=str(runs / "ddp"), push_to=repo)

    assert launch_train(str(data), options, nproc=2) == 0
    out = capfd.readouterr().out
    # Both processes trained (each prints its summary), one folder was written.
    assert out.count("saved lora fine-tune") == 2, out
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    result = tunekit.load(runs / "ddp")
    assert result.metrics["steps"] == 4
    assert result.metrics["train_loss_last"] < result.metrics["train_loss_first"], result.metrics

    # One commit from one process (a second push would add a second commit).
    commits = hub.api.list_repo_commits(repo)
    single = tunekit.finetune(str(data), **dict(OPTIONS, base=str(tiny_model_dir), output_dir=str(tmp_path / "one")))
    with hub.client():
        single.push(f"{hub.user}/single-lora", token=hub.token)
    assert len(commits) == len(hub.api.list_repo_commits(f"{hub.user}/single-lora"))
    # The same adapter layout as a one-process run.
    assert _shapes(runs / "ddp") == _shapes(single.output_dir)
    assert json.loads((runs / "ddp" / "adapter_config.json").read_text())["r"] == 4


def test_nproc_must_be_positive_and_configs_must_exist(tmp_path):
    from tunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="positive"):
        launch_train("x.jsonl", {}, nproc=0)
    with pytest.raises(ConfigError, match="does not exist"):
        launch_train("x.jsonl", {}, nproc=2, config_file=str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("name", ["multi_cpu", "fsdp", "deepspeed_zero3"])
def test_shipped_accelerate_configs_parse(name):
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / f"{name}.yaml"
    assert yaml.safe_load(path.read_text())["num_processes"] >= 2
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader accepts every key
    assert cfg.distributed_type.value == {"multi_cpu": "MULTI_GPU", "fsdp": "FSDP",
                                          "deepspeed_zero3": "DEEPSPEED"}[name]


def test_the_shipped_multi_cpu_config_launches(tiny_model_dir, chat_rows, tmp_path):
    from pathlib import Path

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows))
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "multi_cpu.yaml"
    options = dict(OPTIONS, base=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                   training_args={"max_steps": 2})
    assert launch_train(str(data), options, nproc=2, config_file=str(config)) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
