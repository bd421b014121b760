"""``tunekit estimate | compare | push | pull``, run as a user would: as subprocesses.

They go through ``python -m tunekit.cli``, the ``tunekit`` command itself.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import hub  # noqa: F401  (fixture)

import tunekit
from tunekit.cli import model as model_cli

GB = 10**9


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def llama_70b_config(folder: Path) -> Path:
    """A Llama-2-70B config.json, as copied from a model page (no weights anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16",
    }))
    return path


def test_every_estimate_keyword_has_a_flag_with_its_default():
    params = {n: p for n, p in inspect.signature(tunekit.estimate).parameters.items()
              if p.kind == p.KEYWORD_ONLY}
    assert set(params) == set(model_cli.ESTIMATE_HELP) == set(model_cli.estimate_keywords())
    import argparse

    top = argparse.ArgumentParser()
    model_cli.register(top.add_subparsers(dest="command"))
    est = top._subparsers._group_actions[0].choices["estimate"]
    flags = {a.dest: a for a in est._actions}
    for name, p in params.items():
        assert (f"(default: {p.default})" if p.default is not None else "default: ") in flags[name].help, name
    args = top.parse_args(["estimate", "x", "--seq-len", "128", "--gradient-checkpointing"])
    assert (args.max_length, args.gradient_checkpointing, args.batch_size) == (128, True, None)
    args = top.parse_args(["estimate", "x", "--max-length", "256", "--dropout", "0", "--lora-dropout", "0.1"])
    assert (args.max_length, args.dropout) == (256, 0.1)


def test_old_estimate_flag_names_warn_and_still_work(tiny_model_dir):
    old = run("estimate", str(tiny_model_dir), "--seq-len", "128", "--lora-dropout", "0", "--free", "64GB", "--json")
    new = run("estimate", str(tiny_model_dir), "--max-length", "128", "--dropout", "0", "--free", "64GB", "--json")
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert "--seq-len is deprecated; use --max-length" in old.stderr
    assert "--lora-dropout is deprecated; use --dropout" in old.stderr
    assert "deprecated" not in new.stderr
    totals = [{m: e["total_bytes"] for m, e in json.loads(out.stdout).items() if m != "auto"} for out in (old, new)]
    assert totals[0] == totals[1] and json.loads(old.stdout)["lora"]["seq_len"] == 128


def test_estimate_prints_the_breakdown_and_the_auto_choice_for_a_local_model(tiny_model_dir):
    out = run("estimate", str(tiny_model_dir), "--seq-len", "128", "--free", "64GB")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{tiny_model_dir}: 3,219,776 parameters; cpu (float32), batch 4 x 128 tokens")
    assert lines[1].split() == ["full", "lora", "qlora"]
    for row in ("trainable params", "weights", "gradients", "optimizer states", "activations", "peak total"):
        assert any(line.strip().startswith(row) for line in lines), row
    assert "throughput: full" in out.stdout
    assert lines[-1].startswith("method='auto' with 1,000 examples and 64.0 GB free: lora: it needs ~")


def test_estimate_of_a_70b_config_json_planned_for_a_gpu(tmp_path):
    config = llama_70b_config(tmp_path / "llama-70b")
    out = run("estimate", str(config), "--device", "cuda", "--free", "80GB")
    assert out.returncode == 0, out.stderr
    peak = next(line for line in out.stdout.splitlines() if line.strip().startswith("peak total")).split()
    full, lora, qlora = (float(v) * {"TB": 1000, "GB": 1}[u] for v, u in zip(peak[2::2], peak[3::2]))
    # The seeds' figures: full ≈ 1.4 TB, LoRA ≈ 160 GB, QLoRA ≈ 48 GB (tests/test_estimate.py holds the details).
    assert 1100 < full < 1500 and 140 < lora < 175 and 42 < qlora < 56, peak
    assert "cuda:0 (bfloat16)" in out.stdout and "68,976,648,192 parameters" in out.stdout
    assert "method='auto' with 1,000 examples and 80.0 GB free: qlora: only the 4-bit base fits" in out.stdout

    one = run("estimate", str(config.parent), "--device", "cuda", "--method", "lora", "--json", "--free", "200GB")
    assert one.returncode == 0, one.stderr
    data = json.loads(one.stdout)
    assert data["lora"]["method"] == "lora" and data["lora"]["params_trainable"] < data["lora"]["params_total"]
    assert "auto" not in data  # the verdict needs all three methods

    both = run("estimate", str(config), "--device", "cuda", "--json", "--free", "200GB", "--n-examples", "50000")
    assert json.loads(both.stdout)["auto"]["method"] == "lora"  # full needs 1.24 TB


def test_estimate_user_errors_exit_1_with_one_line(tmp_path):
    out = run("estimate", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    out = run("estimate", str(llama_70b_config(tmp_path / "m")), "--device", "tpu")
    assert out.returncode == 1 and "device must be" in out.stderr
    out = run("estimate", "x", "--free", "lots")
    assert out.returncode == 2 and "expected a size" in out.stderr


def test_compare_from_the_command_line(tiny_model_dir, chat_rows, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows))
    out_dir = tmp_path / "cmp"
    out = run("compare", str(data), "--base", str(tiny_model_dir), "--methods", "lora", "--steps", "1",
              "--metric", "exact", "--max-new-tokens", "3", "--eval-split", "4", "--batch-size", "4",
              "--grad-accum", "1", "--progress", "false", "--output-dir", str(out_dir))
    assert out.returncode == 0, out.stderr
    assert "| method | trainable params |" in out.stdout and "| lora | 32,768 (1%) |" in out.stdout
    assert "| exact_match |" in out.stdout
    for name in ("compare.md", "compare.json", "compare.png", "lora/tunekit.json"):
        assert (out_dir / name).exists(), name
    bad = run("compare", str(data), "--methods", "lora,adapter", "--method", "full")
    assert bad.returncode == 1 and "'adapter' is not one of" in bad.stderr and "use methods=" in bad.stderr


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "adder"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    tunekit.finetune(rows, base=str(tiny_model_dir), method="lora", output_dir=str(out), epochs=1, batch_size=4,
                     grad_accum=1, max_length=128, progress=False, eval_split=0)
    return out


def test_push_then_pull_through_the_hub(hub, run_dir, tmp_path):  # noqa: F811
    repo = f"{hub.user}/cli-adder"
    pushed = run("push", str(run_dir), repo, "--commit-message", "from the CLI", env=hub.env())
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip().endswith(repo)
    assert hub.api.list_repo_commits(repo)[0].title == "from the CLI"
    assert "adapter_model.safetensors" in hub.api.list_repo_files(repo)

    target = tmp_path / "copy"
    pulled = run("pull", repo, "--output-dir", str(target), env=hub.env())
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == str(target)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tunekit.json", "README.md"):
        assert (target / name).is_file() and not (target / name).is_symlink(), name
    assert tunekit.load(target).method == "lora"

    cached = run("pull", repo, env=hub.env())
    assert cached.returncode == 0, cached.stderr
    folder = Path(cached.stdout.strip())
    assert (folder / "adapter_model.safetensors").exists() and "snapshots" in folder.parts

    again = run("pull", repo, "--to", str(target), env=hub.env())
    assert again.returncode == 1 and "not empty" in again.stderr
    assert "--to is deprecated; use --output-dir" in again.stderr  # the old name still works


def test_push_and_pull_user_errors_exit_1_with_one_line(hub, tmp_path):  # noqa: F811
    out = run("push", str(tmp_path), f"{hub.user}/x", env=hub.env())
    assert out.returncode == 1 and "holds no tunekit run" in out.stderr and len(out.stderr.splitlines()) == 1
    out = run("pull", f"{hub.user}/does-not-exist", env=hub.env())
    assert out.returncode == 1 and "was not found" in out.stderr and len(out.stderr.splitlines()) == 1
