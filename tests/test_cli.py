"""The `tunekit` command line, run as a user would: as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunekit import cli
from tunekit.cli import common
from tunekit.options import Options, option_fields


def run(*args: str, stdin: str | None = None, timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def test_every_finetune_option_has_a_train_flag_with_the_same_default():
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    flags = {a.dest: a for a in train._actions}
    for f in option_fields():
        if f.metadata.get("cli", True):
            assert f.name in flags, f"tunekit train lacks --{f.name.replace('_', '-')}"
            assert f"(default: {f.default})" in flags[f.name].help
    # Only what the user typed is passed on, so Options' defaults stay the single source.
    args = parser.parse_args(["train", "data.jsonl", "--epochs", "3", "--use-dora", "--eval-split", "5"])
    assert common.options_from(args) == {"epochs": 3.0, "use_dora": True, "eval_split": 5}
    Options.from_kwargs(common.options_from(args))


def test_help_is_fast_and_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train", "chat", "preview", "hub", "space"):
        assert command in out.stdout


def test_user_errors_exit_1_with_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "bot", "content": "hi"}]}\n')
    out = run("train", str(bad))
    assert out.returncode == 1
    assert out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr and "bad.jsonl" in out.stderr
    out = run("train", str(bad), "--method", "adapter")
    assert out.returncode == 2 and "invalid choice" in out.stderr  # argparse's own usage error


def test_train_then_chat_one_shot_and_interactive(tiny_model_dir, chat_rows, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows))
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data}\nbase: {tiny_model_dir}\nepochs: 1\ngrad_accum: 1\n")
    out_dir = tmp_path / "run"
    out = run("train", "--config", str(config), "--output-dir", str(out_dir), "--progress", "false",
              "--training-arg", "max_steps=2")
    assert out.returncode == 0, out.stderr
    assert f"saved lora fine-tune of {tiny_model_dir} to {out_dir}" in out.stdout
    assert json.loads((out_dir / "metrics.json").read_text())["steps"] == 2

    one = run("chat", str(out_dir), "-p", "What is 2 plus 2?", "--max-new-tokens", "4")
    assert one.returncode == 0, one.stderr
    assert one.stdout.endswith("\n")  # a tiny random model's reply may be blank; the reply line is there

    repl = run("chat", str(out_dir), "--max-new-tokens", "4", stdin="What is 1 plus 1?\n/reset\nAnd 2 plus 2?\n\n")
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout.count("\n") >= 2 and "error" not in repl.stderr  # one reply per question


def test_preview_marks_trained_spans(tiny_model_dir, chat_rows, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows))
    out = run("preview", str(data), "--base", str(tiny_model_dir), "-n", "1")
    assert out.returncode == 0, out.stderr
    assert "⟦0 plus 0 is 0.<|im_end|>⟧" in out.stdout


def test_templates_lists_the_shipped_families():
    out = run("templates")
    for name in ("chatml", "llama-3", "mistral", "gemma", "phi-3", "qwen-2", "zephyr", "alpaca"):
        assert name in out.stdout


@pytest.mark.parametrize("bad", ["--epochs=-1", "--lr=3"])
def test_invalid_values_are_reported_by_the_api_validation(bad, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    out = run("train", str(data), bad)
    assert out.returncode == 1 and "must be" in out.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_model_dir, chat_rows, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_rows))
    out_dir = tmp_path / "never"
    out = run("train", str(data), "--base", str(tiny_model_dir), "--method", "lora", "--output-dir", str(out_dir),
              "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    method = next(line for line in out.stdout.splitlines() if line.startswith("method"))
    assert "lora" in method and "grad_accum" in out.stdout and "peak memory" in out.stdout
    assert not out_dir.exists() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def parse_error(capsys, *argv: str) -> str:
    """argparse's usage error (exit 2) for ``tunekit ARGV``: its message."""
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


def test_sizes_are_decimal_or_binary_and_a_bare_prefix_is_refused(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["hub", "serve"]).max_file_size == 5 * 2**30  # the default, 5GiB
    assert parser.parse_args(["hub", "serve", "--max-file-size", "5GB"]).max_file_size == 5 * 10**9
    assert parser.parse_args(["hub", "serve", "--max-file-size", "5GiB"]).max_file_size == 5 * 2**30
    assert parser.parse_args(["estimate", "x", "--free", "5GB"]).free == 5 * 10**9
    assert parser.parse_args(["estimate", "x", "--free", "5GiB"]).free == 5 * 2**30
    for argv in (["hub", "serve", "--max-file-size", "5G"], ["estimate", "x", "--free", "5G"]):
        err = parse_error(capsys, *argv)
        assert "ambiguous" in err and "5GB" in err and "5GiB" in err, err
    assert "expected a size" in parse_error(capsys, "hub", "serve", "--max-file-size", "big")


def test_deprecated_flag_names_still_work_with_a_warning(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["pull", "user/name", "--to", "here"])
    assert args.output_dir == "here"
    assert "--to is deprecated; use --output-dir" in capsys.readouterr().err
    assert parser.parse_args(["pull", "user/name", "--output-dir", "here"]).output_dir == "here"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "65536"], "--port 65536 is not a TCP port (0-65535; 0 picks a free one)"),
    (["hub", "serve", "--port", "0"], "--port 0 is not a TCP port (1-65535)"),
    (["space", "run", "x", "--port", "0"], "--port 0 is not a TCP port (1-65535)"),
])
def test_one_port_check_for_every_server(argv, message, tmp_path):
    out = run(*argv, "--data", str(tmp_path)) if argv[0] == "hub" else run(*argv)
    assert out.returncode == 1 and out.stderr == f"error: {message}\n", out.stderr
