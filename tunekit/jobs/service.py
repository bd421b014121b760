"""The Files and Fine-tuning Jobs API's operations, independent of HTTP: what ``tunekit serve``'s
``/v1/files`` and ``/v1/fine_tuning/jobs`` routes call.

Every operation takes the caller's owner and only ever finds that owner's objects: another
owner's file, job or model is answered as missing (404), as OpenAI's projects do.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..config import home
from ..errors import ConfigError, ModelError, TunekitError
from ..hubid import is_hub_id
from . import progress, spec as specs
from .files import Blobs, TooLarge
from .owners import Owners, caller
from .runner import Runner
from .store import Store, page

log = logging.getLogger(__name__)

# OpenAI's limits: 64 characters of suffix, 16 metadata pairs of 64-character keys and
# 512-character values.
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FINE_TUNE = "fine-tune"
RESULTS = "fine-tune-results"


def default_data_dir() -> Path:
    """Where ``tunekit serve`` keeps files and jobs without ``--data``: ``$TUNEKIT_HOME/server``."""
    return home() / "server"


class JobError(TunekitError):
    """A request the API refuses, with OpenAI's status, code and field."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def not_found(kind: str, ident: str, param: str | None = None) -> JobError:
    return JobError(404, f"No such {kind}: {ident!r}.", code="not_found" if kind != "model" else "model_not_found",
                    param=param)


class JobService:
    """Files, jobs and their models for one server.

    Args:
        pool: the server's :class:`~tunekit.serve.AdapterPool` (finished models are added to it).
        base_name: the model id of the pool's base, the one model jobs train from.
        api_key: the server's keys (see :class:`~tunekit.jobs.owners.Owners`).
        data: the folder for the database, files and runs; default :func:`default_data_dir`.
        concurrency: jobs trained at once (each in its own process).
        training: ``finetune`` options applied to every job before its own (e.g. ``max_length``).
        max_file_bytes: the largest upload.
        push_to: a Hub user or organisation each succeeded job's model is pushed to, with its
            model card (``HF_ENDPOINT``, ``HF_TOKEN`` from the environment); None: never.
    """

    def __init__(self, pool, base_name: str, *, api_key=None, data: str | Path | None = None, concurrency: int = 1,
                 training: dict | None = None, max_file_bytes: int = 512 * 2**20, push_to: str | None = None):
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise JobError(500, f"jobs concurrency must be a positive integer, got {concurrency!r}")
        self.pool, self.base_name = pool, base_name
        self.owners = Owners(api_key)
        self.data = Path(data).expanduser() if data else default_data_dir()
        self.concurrency, self.training, self.max_file_bytes = concurrency, dict(training or {}), max_file_bytes
        self.push_to = push_to
        self._models: dict[str, str] = {}  # servable model name -> owner
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._closed = False

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> "JobService":
        """Open the store, make earlier jobs' models servable, pick up queued and interrupted
        jobs. Idempotent."""
        with self._lock:
            if self._runner is not None:
                return self
            if self._closed:
                raise JobError(503, "The server is shutting down.", code="server_error")
            self._hold = _hold_folder(self.data)
            self.store = Store(self.data / "jobs.sqlite")
            self.blobs = Blobs(self.data / "files")
            self._runner = Runner(self.store, self.blobs, self.data / "jobs", base=self.base_name,
                                  concurrency=self.concurrency, training=self.training,
                                  on_checkpoint=self._checkpoint, on_success=self._succeeded,
                                  push_to=self.push_to)
        served = []
        for job in self.store.jobs(status="succeeded"):
            if job["fine_tuned_model"] and not job["deleted_model"]:
                served.append((job["fine_tuned_model"], self._runner.folder(job["id"]) / "run", job["owner"]))
        for ckpt in self.store.checkpoints():
            job = self.store.job(ckpt["job_id"], None)
            if job is not None and job["status"] == "succeeded":
                served.append((ckpt["model"], Path(ckpt["folder"]), job["owner"]))
        for name, folder, owner in served:
            try:
                self._serve(name, folder, owner)
            except TunekitError:
                pass  # logged; the server serves the others
        self._runner.start()
        return self

    def resume(self) -> None:
        """At the server's start: start when the data folder holds jobs (so queued and
        interrupted ones carry on at once); else wait for the first request, so a server that
        never uses the API writes nothing. A folder another server holds is logged, not raised:
        the chat API keeps serving, and this API answers 503 saying why."""
        if not (self.data / "jobs.sqlite").exists():
            return
        try:
            self.start()
        except (ConfigError, JobError) as e:
            log.warning("the Fine-tuning Jobs API is off: %s", e)

    def stop(self) -> None:
        """Stop the workers; running jobs resume at the next start."""
        with self._lock:
            runner, self._runner, self._closed = self._runner, None, True
        if runner is not None:
            runner.stop()
            self._hold.close()  # releases the folder's lock

    @property
    def runner(self) -> Runner:
        return self.start()._runner

    # -- files ---------------------------------------------------------------------------------
    def create_file(self, owner: str, *, purpose: str, filename: str, stream: BinaryIO) -> dict:
        runner = self.runner
        try:
            sha, size = runner.blobs.put(stream, limit=self.max_file_bytes)
        except TooLarge:
            raise JobError(413, f"The file is larger than this server accepts ({self.max_file_bytes} bytes).",
                           code="file_too_large", param="file") from None
        return self.store.add_file(owner=owner, purpose=purpose, filename=Path(filename or "upload").name, size=size,
                                   sha256=sha)

    def file(self, owner: str, file_id: str) -> dict:
        row = self.runner.store.file(file_id, owner)
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    def files(self, owner: str, *, purpose: str | None, after: str | None, limit: int,
              order: str = "desc") -> tuple[list[dict], bool]:
        rows = self.runner.store.files(owner, purpose=purpose)
        return page(rows[::-1] if order == "desc" else rows, after=after, limit=limit)

    def delete_file(self, owner: str, file_id: str) -> None:
        row = self.file(owner, file_id)
        if self.store.delete_file(file_id) == 0:
            self.blobs.remove(row["sha256"])

    def content(self, owner: str, file_id: str) -> Path:
        return self.blobs.path(self.file(owner, file_id)["sha256"])

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, owner: str, request: dict[str, Any]) -> dict:
        """Check a job request, store it and start validating its files.

        Args:
            request: ``model``, ``training_file``, ``validation_file``, ``suffix``, ``seed``,
                ``metadata`` and ``method`` (``{"type", "hyperparameters"}``), already in shape.
                ``model`` is the server's base, or one of the caller's ``ft:`` models or
                checkpoints, whose adapter the job then continues training.

        Raises:
            JobError: a model this server cannot train from (404 for an ``ft:`` model that is
                not the caller's), a file that is not the caller's, a suffix or method it
                cannot take.
        """
        runner = self.runner
        model = request["model"]
        if model.startswith("ft:"):
            # Continue the caller's own fine-tune (or checkpoint): its adapter is the job's base=.
            request = {**request, "start_folder": str(self._fine_tune_folder(owner, model))}
        elif model not in self._base_names():
            raise JobError(400, f"This server trains from its base {self.base_name!r} only (the model that serves "
                                f"the result); got {model!r}. Start `tunekit serve --base {model}` to fine-tune it.",
                           code="model_not_available", param="model")
        for param in ("training_file", "validation_file"):
            if request.get(param):
                self.file(owner, request[param])  # 404 for a file that is missing or not the caller's
        suffix = request.get("suffix")
        if suffix is not None and not _SUFFIX.match(suffix):
            raise JobError(400, "suffix must be 1 to 64 letters, digits, '-' or '_'.", code="invalid_value",
                           param="suffix")
        kind = request["method"]["type"]
        if not specs.supports(kind):
            raise JobError(400, f"method type {kind!r} needs preference tuning (tunekit.finetune(objective=...)), "
                                "which this version of tunekit does not have.", code="unsupported_value",
                           param="method.type")
        job = self.store.add_job(owner=owner, request=request)
        runner.folder(job["id"]).mkdir(parents=True, exist_ok=True)
        self.store.add_event(job["id"], f"Created fine-tuning job: {job['id']}")
        runner.validate(job["id"])
        return self.job(owner, job["id"])

    def job(self, owner: str, job_id: str) -> dict:
        job = self.runner.store.job(job_id, owner)
        if job is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return job

    def jobs(self, owner: str, *, after: str | None, limit: int,
             metadata: dict | None = None) -> tuple[list[dict], bool]:
        rows = self.runner.store.jobs(owner)[::-1]  # newest first
        if metadata:
            rows = [j for j in rows
                    if all((j["request"].get("metadata") or {}).get(k) == v for k, v in metadata.items())]
        return page(rows, after=after, limit=limit)

    def cancel(self, owner: str, job_id: str) -> dict:
        job = self.job(owner, job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            raise JobError(400, f"Job {job_id} has already {job['status']}; it cannot be cancelled.",
                           code="invalid_state", param="fine_tuning_job_id")
        self.runner.cancel(job_id)
        return self.job(owner, job_id)

    def events(self, owner: str, job_id: str, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
        self.job(owner, job_id)
        return page(self.store.events(job_id), after=after, limit=limit)

    def checkpoints(self, owner: str, job_id: str, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
        self.job(owner, job_id)
        return page(self.store.checkpoints(job_id), after=after, limit=limit)

    def resolved_hyperparameters(self, job: dict) -> dict:
        method = job["request"]["method"]
        return specs.resolved(method.get("hyperparameters", {}), method["type"])

    # -- models --------------------------------------------------------------------------------
    def visible_models(self) -> list[str]:
        """The fine-tuned models (and checkpoints) of the request's caller, oldest first."""
        owner = caller()
        with self._lock:
            return [name for name, who in self._models.items() if who == owner]

    def delete_model(self, owner: str, name: str) -> None:
        """Stop serving a fine-tuned model (or checkpoint) of the caller's.

        Raises:
            JobError: 404 for a model that is not the caller's fine-tune.
        """
        with self._lock:
            if self._models.get(name) != owner:
                raise not_found("model", name, "model")
            del self._models[name]
        try:
            self.pool.remove(name)
        except ModelError:
            pass  # never loaded
        for job in self.store.jobs(owner):
            if job["fine_tuned_model"] == name:
                self.store.update_job(job["id"], deleted_model=1)
        for ckpt in self.store.checkpoints():
            if ckpt["model"] == name:
                self.store.delete_checkpoint(ckpt["id"])

    def _fine_tune_folder(self, owner: str, name: str) -> Path:
        """The adapter folder of ``owner``'s fine-tuned model or checkpoint ``name``.

        Raises:
            JobError: 404, as for any model that is not the caller's (deleted ones included).
        """
        with self._lock:
            served = self._models.get(name) == owner
        if served:
            for job in self.store.jobs(owner, status="succeeded"):
                if job["fine_tuned_model"] == name and not job["deleted_model"]:
                    return self.runner.folder(job["id"]) / "run"
            for ckpt in self.store.checkpoints():
                if ckpt["model"] == name and Path(ckpt["folder"]).is_dir():
                    return Path(ckpt["folder"])
        raise not_found("model", name, "model")

    def model_name(self, job: dict, step: int | None = None) -> str:
        """``ft:<base>:<owner>:<suffix>:<job>`` (and ``:ckpt-step-<N>`` for a checkpoint)."""
        base = self.base_name if is_hub_id(self.base_name) else Path(self.base_name).name
        name = f"ft:{base}:{job['owner']}:{job['request'].get('suffix') or ''}:{job['id'].removeprefix('ftjob-')}"
        return name if step is None else f"{name}:ckpt-step-{step}"

    # -- the runner's callbacks ----------------------------------------------------------------
    def _checkpoint(self, job: dict, step: int, folder: Path, metrics: dict) -> None:
        self.store.add_checkpoint(job["id"], step=step, metrics=metrics, model=self.model_name(job, step),
                                  folder=str(folder))

    def _succeeded(self, job: dict, run: Path) -> None:
        name = self.model_name(job)
        metrics_path = run / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        trained = int((metrics.get("tokens_per_epoch") or 0) * (metrics.get("epochs") or 0))
        states = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        history = (progress.trainer_state(states[-1]) or {}).get("log_history", []) if states else []
        sha, size = self.blobs.put(io.BytesIO(progress.result_csv(progress.steps(history))), limit=1 << 40)
        result = self.store.add_file(owner=job["owner"], purpose=RESULTS, filename="step_metrics.csv", size=size,
                                     sha256=sha)
        try:
            self._serve(name, run, job["owner"])
            for ckpt in self.store.checkpoints(job["id"]):
                self._serve(ckpt["model"], Path(ckpt["folder"]), job["owner"])
        except TunekitError as e:
            self.runner.fail(job["id"], {"code": "server_error", "message": f"the model cannot be served: {e}",
                                          "param": None})
            return
        if self.store.update_job(job["id"], status="succeeded", fine_tuned_model=name, trained_tokens=trained,
                                 finished_at=int(time.time()), estimated_finish=None, result_files=[result["id"]],
                                 only_if=("running",)):
            self.store.add_event(job["id"], f"New fine-tuned model created: {name}")
            self.store.add_event(job["id"], "The job has successfully completed")

    def _serve(self, name: str, folder: Path, owner: str) -> None:
        try:
            self.pool.add(folder, name=name)
        except TunekitError as e:
            log.warning("cannot serve %s from %s: %s", name, folder, e)
            raise
        with self._lock:
            self._models[name] = owner

    def _base_names(self) -> set[str]:
        from ..models import EMBEDDED_ID

        names = {self.base_name, self.pool.base}
        if self.pool.base == EMBEDDED_ID or self.base_name == EMBEDDED_ID:
            names.add(EMBEDDED_ID)
        return names


def _hold_folder(data: Path):
    """Lock ``data`` for this server: two servers on one folder would both run its jobs.

    Raises:
        JobError: 503, another running server holds it.
    """
    import fcntl

    data.mkdir(parents=True, exist_ok=True)
    handle = open(data / "server.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JobError(503, "The jobs folder of this server is in use by another tunekit server; start this one "
                            "with its own --data folder.", code="server_error") from None
    return handle
