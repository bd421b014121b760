"""Running jobs: validating their files, the queue, one worker process per running job, watching
its checkpoints, cancelling, and picking up after a restart.

A job's folder is ``<data>/jobs/<job id>/``: its files linked by id, ``spec.json`` (what the
worker runs), ``log.txt`` (the worker's output), ``worker.pid``, ``outcome.json`` (how it ended), ``run/`` (the
tunekit run folder) and ``checkpoints/step-<N>/`` (the servable copy of each checkpoint the
Trainer wrote; the Trainer rotates its own away).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import checkpoints as ckpts
from ..folders import LOG_FILE
from . import progress, spec as specs, validate
from .files import Blobs
from .store import FINAL, Store
from .worker import OUTCOME

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 3  # as OpenAI keeps the last three
POLL = 0.5
STOP_GRACE = 20  # seconds a worker has to stop after SIGTERM before it is killed
# The files a servable checkpoint copy keeps (weights, adapter config, tokenizer and template).
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt")


class Runner:
    """The queue and its workers.

    Args:
        store: the jobs' state.
        blobs: the uploaded files' content.
        root: the folder holding one folder per job.
        base: the base every job trains from (the server's).
        concurrency: jobs trained at once.
        training: the server's defaults for every job's ``finetune`` options.
        on_checkpoint: called with ``(job, step, folder, metrics)`` for each servable checkpoint
            copy; it records the checkpoint.
        on_success: called with ``(job, run folder)`` when a job has succeeded, before its status
            says so (the server makes the model servable there).
        push_to: a Hub user or organisation each succeeded job's model is pushed to by its
            worker (:func:`~tunekit.jobs.spec.hub_repo` names the repo); None: never.
    """

    def __init__(self, store: Store, blobs: Blobs, root: Path, *, base: str, concurrency: int = 1,
                 training: dict | None = None, on_checkpoint: Callable | None = None,
                 on_success: Callable | None = None, push_to: str | None = None):
        self.store, self.blobs, self.root, self.base = store, blobs, Path(root), base
        self.concurrency = concurrency
        self.training = dict(training or {})
        self.on_checkpoint, self.on_success, self.push_to = on_checkpoint, on_success, push_to
        self._wake = threading.Condition()
        self._running: dict[str, subprocess.Popen] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Pick up what a previous server left, then start dispatching."""
        for job in self.store.jobs(status="running"):
            self.store.update_job(job["id"], status="queued", attempts=job["attempts"] + 1)
            self.store.add_event(job["id"], "The server restarted; the job resumes from its last checkpoint.")
        for job in self.store.jobs(status="validating_files"):
            self.validate(job["id"])
        thread = threading.Thread(target=self._dispatch, name="tunekit-jobs", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop the workers (their jobs stay ``running``, resumed at the next start)."""
        with self._wake:
            self._stopping = True
            procs = list(self._running.values())
            self._wake.notify_all()
        for proc in procs:
            _terminate(proc)
        for thread in self._threads:
            thread.join(timeout=STOP_GRACE + 5)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    # -- validating ----------------------------------------------------------------------------
    def validate(self, job_id: str) -> None:
        """Check the job's files in a thread; queue it when they read, fail it when not."""
        thread = threading.Thread(target=self._validate, args=(job_id,), daemon=True)
        thread.start()

    def _validate(self, job_id: str) -> None:
        job = self.store.job(job_id, None)
        request = job["request"]
        self.store.add_event(job_id, f"Validating training file: {request['training_file']}")
        for param in ("training_file", "validation_file"):
            if not request.get(param):
                continue
            path = self._link(job, request[param])
            objective = specs.OBJECTIVES.get(request["method"]["type"], "sft")
            error = validate.check_file(path, param=param, objective=objective) if path is not None else {
                "code": "invalid_file", "message": f"{request[param]} was deleted before the job ran.", "param": param}
            if error is not None:
                self.fail(job_id, error)
                return
        if self.store.update_job(job_id, status="queued", only_if=("validating_files",)):
            self.store.add_event(job_id, "Files validated, moving job to queued state")
        with self._wake:
            self._wake.notify_all()

    def _link(self, job: dict, file_id: str) -> Path | None:
        row = self.store.file(file_id, job["owner"])
        if row is None:
            return None
        return self.blobs.link(row["sha256"], self.folder(job["id"]) / f"{file_id}.jsonl")

    # -- the queue -----------------------------------------------------------------------------
    def poke(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _dispatch(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                queued = self.store.jobs(status="queued") if len(self._running) < self.concurrency else []
                if not queued:
                    self._wake.wait(timeout=2)
                    continue
                job = queued[0]
                if not self.store.update_job(job["id"], status="running", only_if=("queued",)):
                    continue
                try:
                    proc = self._spawn(job)
                except Exception as e:  # nothing must stop the queue
                    log.exception("could not start job %s", job["id"])
                    self.fail(job["id"], {"code": "server_error", "message": f"could not start the job: {e}",
                                           "param": None})
                    continue
                self._running[job["id"]] = proc
            thread = threading.Thread(target=self._watch, args=(job, proc), name=f"job-{job['id']}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self, job: dict) -> subprocess.Popen:
        folder = self.folder(job["id"])
        request = job["request"]
        data = self._link(job, request["training_file"])
        evald = self._link(job, request["validation_file"]) if request.get("validation_file") else None
        if data is None or (request.get("validation_file") and evald is None):
            raise RuntimeError("a file of the job was deleted before it ran")
        method = request["method"]
        # An ft: model's job continues its adapter (service.create_job found its folder).
        base = request.get("start_folder") or self.base
        options = specs.finetune_options(method.get("hyperparameters", {}), method["type"], base=base,
                                         seed=request.get("seed"), eval_data=str(evald) if evald else None,
                                         output_dir=str(folder / "run"), resume=True, defaults=self.training)
        params = {data.name: "training_file", **({evald.name: "validation_file"} if evald else {})}
        spec_path = folder / "spec.json"
        push = specs.hub_repo(self.push_to, self.base, job) if self.push_to else None
        spec_path.write_text(json.dumps({"data": str(data), "options": options, "params": params, "push": push},
                                        indent=1))
        (folder / OUTCOME).unlink(missing_ok=True)
        self.store.add_event(job["id"], "Fine-tuning job started" if job["attempts"] == 0 else
                             "Fine-tuning job resumed")
        logfile = open(folder / "log.txt", "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "tunekit.jobs.worker", str(spec_path), str(os.getpid())],
                                    stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=self._worker_env())
        finally:
            logfile.close()
        (folder / "worker.pid").write_text(str(proc.pid))  # for operators: which process trains it
        return proc

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.concurrency > 1 and "OMP_NUM_THREADS" not in env:
            # Workers side by side share the cores rather than each taking all of them.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.concurrency))
        return env

    # -- one running job -----------------------------------------------------------------------
    def _watch(self, job: dict, proc: subprocess.Popen) -> None:
        job_id = job["id"]
        clock = _Clock()
        tail = progress.Tail(self.folder(job_id) / "run" / LOG_FILE)
        try:
            while proc.poll() is None:
                if self._stopping:
                    return  # stop() ends the worker; the job stays running for the next start
                if self.store.job(job_id, None)["cancel"]:
                    _terminate(proc)
                    self._cancelled(job_id)
                    return
                self._scan(job, clock, tail)
                time.sleep(POLL)
            if self._stopping:
                return
            self._scan(job, clock, tail, final=True)
            self._finish(job, proc.returncode)
        except Exception as e:  # a bug here fails the job, never the server
            log.exception("watching job %s failed", job_id)
            _terminate(proc)
            self.fail(job_id, {"code": "server_error", "message": f"the server lost track of the job: {e}",
                                "param": None})
        finally:
            with self._wake:
                self._running.pop(job_id, None)
                self._wake.notify_all()

    def _scan(self, job: dict, clock: "_Clock", tail: "progress.Tail", *, final: bool = False) -> None:
        """Record what the run has done since the last look: step events as the Trainer logs
        them (its ``logs.jsonl``), the checkpoints it has completed (an event and a servable
        copy each), and the job's estimated finish.

        A step's event waits until the run has moved past it (a later log line, a checkpoint at
        or after it, or the end), so a step's training and validation loss, logged one after the
        other, make one event."""
        run = self.folder(job["id"]) / "run"
        entries = tail.read()
        events = self.store.events(job["id"])
        # From the events, not the checkpoint table: pruned checkpoints must stay seen.
        known = {e["data"]["checkpoint_step"] for e in events if e["data"] and "checkpoint_step" in e["data"]}
        done = max((e["data"]["step"] for e in events if e["type"] == "metrics" and e["data"]), default=-1)
        work = run / "checkpoints"
        fresh = []
        for folder in sorted(work.glob("checkpoint-*"), key=lambda p: ckpts.step_of(p) or -1) if work.is_dir() else []:
            step = ckpts.step_of(folder)
            if step is None or step in known or not ckpts.is_complete(folder):
                continue
            state = progress.trainer_state(folder)
            if state is not None:
                fresh.append((step, folder, state))
        history = [*(fresh[-1][2].get("log_history", []) if fresh else []), *entries]
        metrics = progress.steps(history)
        total = next((e["max_steps"] for e in reversed(entries) if e.get("max_steps")), None) or \
            (fresh[-1][2].get("max_steps") if fresh else None)
        last_logged = max((int(e.get("step", 0)) for e in entries), default=-1)
        settled = float("inf") if final else max(last_logged - 1, max((f[0] for f in fresh), default=-1))
        for s, row in metrics.items():
            if done < s <= settled:
                self.store.add_event(job["id"], progress.step_message(row, total), type="metrics",
                                     data={**row, "total_steps": total})
                done = s
                finish = clock.estimate(s, total)
                if finish is not None:
                    self.store.update_job(job["id"], estimated_finish=finish)
        for step, folder, state in fresh:
            copy = self._copy(job, folder, step)
            self.store.add_event(job["id"], f"Checkpoint created at step {step}",
                                 data={"checkpoint_step": step})
            if self.on_checkpoint is not None:
                own = progress.steps(state.get("log_history", []))
                self.on_checkpoint(job, step, copy, progress.at_or_before(own, step))
        if fresh:
            self._prune(job["id"])

    def _copy(self, job: dict, folder: Path, step: int) -> Path:
        copy = self.folder(job["id"]) / "checkpoints" / f"step-{step}"
        copy.mkdir(parents=True, exist_ok=True)
        for name in _ADAPTER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, copy / name)
        config = copy / "adapter_config.json"
        if config.is_file():
            # As train.py does for the final adapter: name the base, not the folder it was read from.
            cfg = json.loads(config.read_text())
            cfg["base_model_name_or_path"] = self.base
            config.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        return copy

    def _prune(self, job_id: str) -> None:
        for old in self.store.checkpoints(job_id)[KEEP_CHECKPOINTS:]:
            self.store.delete_checkpoint(old["id"])
            shutil.rmtree(old["folder"], ignore_errors=True)

    def _finish(self, job: dict, returncode: int) -> None:
        folder = self.folder(job["id"])
        try:
            outcome = json.loads((folder / OUTCOME).read_text())
        except (OSError, ValueError):
            outcome = {"ok": False, "code": "server_error",
                       "message": f"the training process ended with exit status {returncode} before finishing"
                                  f"{_last_line(folder / 'log.txt')}", "param": None}
        if not outcome["ok"]:
            self.fail(job["id"], {k: outcome.get(k) for k in ("code", "message", "param")})
            return
        run = Path(outcome["output_dir"])
        if outcome.get("pushed"):
            self.store.add_event(job["id"], f"Model pushed to {outcome['pushed']}",
                                 data={"pushed_to": outcome["pushed"]})
        elif outcome.get("push_error"):
            self.store.add_event(job["id"], f"Could not push the model to the Hub: {outcome['push_error']}",
                                 level="warn", data={"push_error": outcome["push_error"]})
        if self.on_success is not None:
            self.on_success(job, run)
        else:
            self.store.update_job(job["id"], status="succeeded", finished_at=int(time.time()), only_if=("running",))

    def fail(self, job_id: str, error: dict) -> None:
        """Fail a job with OpenAI's ``{code, message, param}``; the message names the job's files
        by id only, never by their place on the server's disk."""
        error = {**error, "message": error["message"].replace(f"{self.folder(job_id)}{os.sep}", "")}
        if self.store.update_job(job_id, status="failed", error=error, finished_at=int(time.time()),
                                 estimated_finish=None, only_if=("validating_files", "queued", "running")):
            self.store.add_event(job_id, f"Fine-tuning job failed: {error['message']}", level="error")

    def _cancelled(self, job_id: str) -> None:
        if self.store.update_job(job_id, status="cancelled", finished_at=int(time.time()), estimated_finish=None,
                                 only_if=("validating_files", "queued", "running")):
            self.store.add_event(job_id, "Fine-tuning job cancelled")

    # -- cancelling ----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Cancel a job: at once when it has not started, else by stopping its worker (the
        watcher records it)."""
        self.store.update_job(job_id, cancel=1)
        with self._wake:
            running = job_id in self._running
        if not running:
            self._cancelled(job_id)


class _Clock:
    """When a job will finish, from the pace of the steps this attempt has run."""

    def __init__(self):
        self.start, self.first = time.time(), None

    def estimate(self, step: int, total: int | None) -> int | None:
        if self.first is None:
            self.first = (step, time.time())
            return None
        done, elapsed = step - self.first[0], time.time() - self.first[1]
        if not total or done <= 0:
            return None
        return int(time.time() + (total - step) * elapsed / done)


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


__all__ = ["FINAL", "Runner"]
