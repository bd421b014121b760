"""Checkpoints: a run killed while saving resumes from the newest complete checkpoint; what
makes a checkpoint complete (tunekit.checkpoints), judged on real checkpoint folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import tunekit
import tunekit.trainer
from tunekit import checkpoints
from tunekit.checkpoints import MANIFEST

# 12 rows, batch 4, 2 epochs: 6 updates, a checkpoint after each (eval_steps=1).
RUN = dict(eval_split=0, epochs=2, batch_size=4, grad_accum=1, max_length=128, progress=False, eval_steps=1)

# A training process the test kills with SIGKILL in the middle of writing checkpoint-3: the
# Trainer asks its stateful callbacks for their state after writing the weights, optimizer,
# scheduler and RNG state and before trainer_state.json, so the callback below says so on
# stdout and waits there to be killed.
CHILD = textwrap.dedent('''
    import json, sys, time
    from transformers.trainer_callback import ExportableState, TrainerCallback
    from tunekit import train
    from tunekit.options import Options
    from tunekit.placement import placement
    from tunekit.plan import build

    base, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = json.loads(sys.stdin.read())

    class StopWhileSaving(TrainerCallback, ExportableState):
        step = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.step = state.global_step

        def state(self):
            if self.step == kill_at:
                print("saving", flush=True)
                time.sleep(600)
            return {"args": {}, "attributes": {}}

    opts = Options.from_kwargs(dict(base=base, output_dir=out, **json.loads(sys.argv[4])))
    prepared = train.prepare_data(rows, opts)
    run_plan = build(opts, prepared.base.path, prepared.train_enc, prepared.eval_enc, placement(opts.device))
    folder = train.output_dir(run_plan.options)
    model, peft_config = train.build_model(prepared, run_plan)
    trainer = train.build_trainer(model, peft_config, prepared, run_plan, folder)
    trainer.add_callback(StopWhileSaving())
    train.train_and_save(trainer, prepared, run_plan, folder, adapter=peft_config is not None)
''')


def _train_until_killed(base: Path, out: Path, rows: list[dict], *, kill_at: int, log: Path) -> None:
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(base), str(out), str(kill_at), json.dumps(RUN)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    watchdog = threading.Timer(300, child.kill)  # never wait forever on a stuck child
    watchdog.start()
    try:
        child.stdin.write(json.dumps(rows))
        child.stdin.close()
        line = child.stdout.readline()  # blocks until the child is inside the save
        if line.strip() != "saving":
            child.wait(timeout=60)
            pytest.fail(f"the training process ended before the save (rc {child.returncode}):\n"
                        f"{log.read_text()[-3000:]}")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_run_killed_while_saving_resumes_from_the_newest_complete_checkpoint(tiny_model_dir, chat_rows, tmp_path):
    out = tmp_path / "run"
    _train_until_killed(tiny_model_dir, out, chat_rows, kill_at=3, log=tmp_path / "child.log")
    saved = out / "checkpoints"
    assert (saved / "checkpoint-3" / "adapter_model.safetensors").is_file()  # killed mid-save
    assert not (saved / "checkpoint-3" / "trainer_state.json").exists()
    assert checkpoints.why_incomplete(saved / "checkpoint-3") == "trainer_state.json is missing"
    assert checkpoints.is_complete(saved / "checkpoint-2")
    assert (saved / "checkpoint-2" / MANIFEST).is_file()  # the Trainer's on_save hook wrote it

    result = tunekit.finetune(chat_rows, base=str(tiny_model_dir), output_dir=str(out), resume=True, **RUN)

    assert result.metrics["steps"] == 6
    state = json.loads((saved / "checkpoint-6" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6], "resumed after step 2: no step lost, none trained twice"
    assert checkpoints.is_complete(saved / "checkpoint-6")


@pytest.fixture(scope="module")
def real_checkpoints(tiny_model_dir, tmp_path_factory) -> Path:
    """checkpoint-1 and checkpoint-2 of a real two-step run, as the Trainer wrote them."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}."}]} for i in range(8)]
    tunekit.finetune(rows, base=str(tiny_model_dir), output_dir=str(out), **{**RUN, "epochs": 1})
    return out / "checkpoints"


@pytest.fixture
def saved(real_checkpoints, tmp_path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(real_checkpoints, copy)
    return copy


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_an_intact_checkpoint_is_complete_with_or_without_its_manifest(saved):
    for folder in (saved / "checkpoint-1", saved / "checkpoint-2"):
        (folder / MANIFEST).unlink(missing_ok=True)
        assert checkpoints.why_incomplete(folder) is None
        checkpoints.mark_complete(folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["step"] == checkpoints.step_of(folder)
        assert manifest["files"]["trainer_state.json"] == (folder / "trainer_state.json").stat().st_size
        assert checkpoints.why_incomplete(folder) is None
    assert checkpoints.last_complete(saved) == saved / "checkpoint-2"


@pytest.mark.parametrize("name, why", [
    ("adapter_model.safetensors", "adapter_model.safetensors is cut short"),
    ("optimizer.pt", "optimizer.pt is cut short"),
    ("trainer_state.json", "trainer_state.json is cut short"),
])
def test_a_file_cut_short_makes_an_unmarked_checkpoint_incomplete(saved, name, why):
    newest = saved / "checkpoint-2"
    (newest / MANIFEST).unlink(missing_ok=True)
    _cut(newest / name)
    assert checkpoints.why_incomplete(newest) == why
    assert checkpoints.last_complete(saved) == saved / "checkpoint-1"


def test_a_marked_checkpoint_whose_files_changed_is_incomplete(saved):
    newest = saved / "checkpoint-2"
    checkpoints.mark_complete(newest)
    (newest / "scheduler.pt").unlink()  # as the Trainer's rotation deletes a folder, file by file
    assert checkpoints.why_incomplete(newest) == "scheduler.pt is missing"
    checkpoints.mark_complete(newest)
    _cut(newest / "rng_state.pth", keep=0.99)
    assert "rng_state.pth has" in checkpoints.why_incomplete(newest)
    assert checkpoints.last_complete(saved) == saved / "checkpoint-1"


def test_only_the_checkpoints_after_the_resume_point_are_discarded(saved):
    (saved / "checkpoint-3").mkdir()
    (saved / "notes").mkdir()  # not a checkpoint: never touched
    gone = checkpoints.discard_after(saved, saved / "checkpoint-2")
    assert gone == [saved / "checkpoint-3"]
    assert not (saved / "checkpoint-3").exists()
    assert all((saved / name).is_dir() for name in ("checkpoint-1", "checkpoint-2", "notes"))


def test_the_trainer_marks_every_checkpoint_it_completes(real_checkpoints):
    for folder in real_checkpoints.glob("checkpoint-*"):
        assert (folder / MANIFEST).is_file(), folder
        assert checkpoints.is_complete(folder)
