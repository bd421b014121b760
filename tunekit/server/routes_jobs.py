"""``/v1/fine_tuning/jobs`` (create, list, retrieve, cancel, events, checkpoints) and
``DELETE /v1/models/{id}``, as OpenAI's Fine-tuning API; :func:`attach` puts the jobs service
(:class:`tunekit.jobs.service.JobService`) on an app.

Jobs train in worker processes; a finished job's model (``ft:<base>:<owner>:<suffix>:<job>``)
and its checkpoints are served at once by the same server's ``/v1/chat/completions`` and listed
by ``/v1/models``, for the key that made them only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..jobs.owners import CallerMiddleware, caller
from ..jobs.service import JobError, JobService
from .context import context_of
from .errors import APIError, from_validation
from .schemas_jobs import Checkpoint, Deleted, Event, Job, JobRequest, Page

router = APIRouter()


def attach(app: FastAPI, *, data: str | Path | None = None, concurrency: int = 1, training: dict | None = None,
           max_file_bytes: int | None = None, push_to: str | None = None) -> JobService:
    """Give an app made by :func:`tunekit.server.create_app` its Files and Fine-tuning Jobs
    service (``create_app`` attaches one with the defaults; call this before the app starts to
    choose others).

    Args:
        app: the app.
        data: folder for the jobs' database, uploaded files and runs; default
            ``$TUNEKIT_HOME/server``.
        concurrency: jobs trained at once, each in its own process (1: one at a time).
        training: ``tunekit.finetune`` options every job starts from (e.g. ``{"max_length": 512}``);
            a job's own hyperparameters override them.
        max_file_bytes: the largest upload; default: the app's upload limit (``max_upload``),
            which bounds uploads anyway.
        push_to: a Hub user or organisation each succeeded job's model is pushed to, with its
            model card (``HF_ENDPOINT``, ``HF_TOKEN`` from the environment); None: never.

    Returns:
        The service, started when the app starts (or by its first request).

    Example:
        >>> app = create_app(pool, api_key=["key-a", "key-b"])  # doctest: +SKIP
        >>> attach(app, data="/srv/tunekit", concurrency=2)  # doctest: +SKIP
    """
    context = app.state.context
    service = JobService(context.pool, context.base_name, api_key=context.api_key, data=data,
                         concurrency=concurrency, training=training,
                         max_file_bytes=max_file_bytes or getattr(app.state, "max_upload", context.max_body),
                         push_to=push_to)
    app.state.jobs = service
    context.extra_models = lambda: app.state.jobs.visible_models()
    if not getattr(app.state, "jobs_attached", False):
        app.state.jobs_attached = True
        app.add_middleware(CallerMiddleware, owners=lambda: app.state.jobs.owners)
        previous = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a):
            # Queued and interrupted jobs carry on as soon as the server is up, not at its first request.
            await run_in_threadpool(a.state.jobs.resume)
            try:
                async with previous(a) as state:
                    yield state
            finally:
                await run_in_threadpool(a.state.jobs.stop)

        app.router.lifespan_context = lifespan
    return service


def service_of(request: Request) -> JobService:
    """The app's jobs service."""
    return request.app.state.jobs


def call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, a :class:`JobError` answered in OpenAI's shape."""
    try:
        return fn(*args, **kwargs)
    except JobError as e:
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        raise APIError(e.status, e.message, type=kind, param=e.param, code=e.code) from e


def job_object(service: JobService, job: dict) -> Job:
    """A stored job in OpenAI's ``fine_tuning.job`` shape."""
    request = job["request"]
    kind = request["method"]["type"]
    hyper = service.resolved_hyperparameters(job)
    return Job(id=job["id"], created_at=job["created_at"], error=job["error"], fine_tuned_model=job["fine_tuned_model"],
               finished_at=job["finished_at"], hyperparameters={k: v for k, v in hyper.items() if k != "beta"},
               model=request["model"], organization_id=job["owner"], result_files=job["result_files"],
               seed=request["seed"] if request.get("seed") is not None else _default_seed(), status=job["status"],
               trained_tokens=job["trained_tokens"], training_file=request["training_file"],
               validation_file=request.get("validation_file"), estimated_finish=job["estimated_finish"],
               metadata=request.get("metadata"), method={"type": kind, kind: {"hyperparameters": hyper}},
               user_provided_suffix=request.get("suffix"))


def _default_seed() -> int:
    from ..options import Options

    return Options.seed


@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request) -> Job:
    # Read and validated here, as chat does, so every error keeps OpenAI's shape and codes.
    try:
        body = JobRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise _refused(e.errors()) from e
    if body.integrations:
        raise APIError(400, "integrations (Weights & Biases) are not supported by tunekit serve; the job's metrics "
                            "are in its events, checkpoints and result file.", param="integrations",
                       code="unsupported_parameter")
    if body.method is not None and body.method.type == "reinforcement":
        raise APIError(400, "method type 'reinforcement' (reinforcement fine-tuning with graders) is not supported "
                            "by tunekit serve; use 'supervised' or 'dpo'.", param="method.type",
                       code="unsupported_value")
    service = service_of(request)
    job = await run_in_threadpool(call, service.create_job, caller(), body.normalised())
    return job_object(service, job)


def _refused(errors: list[dict]) -> APIError:
    err = errors[0]
    if err["type"] == "extra_forbidden":
        name = ".".join(str(p) for p in err["loc"])
        return APIError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    return from_validation(errors)


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> Page:
    service = service_of(request)
    metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                if k.startswith("metadata[") and k.endswith("]")}
    jobs, more = call(service.jobs, caller(), after=after, limit=max(1, min(limit, 100)), metadata=metadata)
    return Page.of([job_object(service, j) for j in jobs], more)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Job:
    service = service_of(request)
    return job_object(service, call(service.job, caller(), job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Job:
    service = service_of(request)
    return job_object(service, await run_in_threadpool(call, service.cancel, caller(), job_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def list_events(request: Request, job_id: str, after: str | None = None, limit: int = 20) -> Page:
    events, more = call(service_of(request).events, caller(), job_id, after=after, limit=max(1, min(limit, 1000)))
    return Page.of([Event(id=e["id"], created_at=e["created_at"], level=e["level"], message=e["message"],
                          type=e["type"], data=e["data"]) for e in events], more)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = 10) -> Page:
    found, more = call(service_of(request).checkpoints, caller(), job_id, after=after, limit=max(1, min(limit, 100)))
    return Page.of([Checkpoint(id=c["id"], created_at=c["created_at"], fine_tuned_model_checkpoint=c["model"],
                               fine_tuning_job_id=c["job_id"], step_number=c["step"],
                               metrics={k: float(v) for k, v in c["metrics"].items() if v is not None})
                    for c in found], more)


@router.delete("/v1/models/{model_id:path}")
async def delete_model(request: Request, model_id: str) -> Deleted:
    service = service_of(request)
    if context_of(request).is_listed(model_id) and not model_id.startswith("ft:"):
        raise APIError(403, f"The model '{model_id}' was named when the server started; only fine-tuned models "
                            "can be deleted.", param="model", code="insufficient_permissions")
    await run_in_threadpool(call, service.delete_model, caller(), model_id)
    return Deleted(id=model_id, object="model")
