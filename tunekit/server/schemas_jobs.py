"""Pydantic shapes of the Files and Fine-tuning Jobs API: the job request as OpenAI's SDK sends
it, and the objects answered (``file``, ``fine_tuning.job``, its events and checkpoints)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    """OpenAI's hyperparameters; each a value or ``"auto"`` (tunekit's default)."""

    n_epochs: Auto | int | None = Field(None, description="passes over the training file")
    batch_size: Auto | int | None = Field(None, description="examples per step")
    learning_rate_multiplier: Auto | float | None = Field(None, description="times tunekit's LoRA learning rate")
    beta: Auto | float | None = Field(None, description="DPO's beta (dpo only)")

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, v):
        if isinstance(v, int) and not 1 <= v <= 1000:
            raise ValueError("must be 'auto' or a positive integer")
        return v

    @field_validator("learning_rate_multiplier", "beta")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, float) and not 0 < v <= 100:
            raise ValueError("must be 'auto' or a positive number")
        return v


class _MethodPart(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """``{"type": "supervised" | "dpo", "supervised" | "dpo": {"hyperparameters": {...}}}``."""

    model_config = ConfigDict(extra="allow")  # "reinforcement" is refused with its own message
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: _MethodPart | None = None
    dpo: _MethodPart | None = None


class JobRequest(BaseModel):
    """``POST /v1/fine_tuning/jobs``'s body."""

    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("metadata takes at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v

    def normalised(self) -> dict[str, Any]:
        """The request as stored: one ``method`` ``{"type", "hyperparameters"}`` (the legacy
        top-level ``hyperparameters`` are the supervised method's)."""
        method = self.method or Method(type="supervised")
        part = getattr(method, method.type, None) if method.type != "reinforcement" else None
        hyper = (part.hyperparameters if part is not None and part.hyperparameters is not None
                 else self.hyperparameters or Hyperparameters())
        values = hyper.model_dump(exclude_none=True)
        if method.type != "dpo":
            values.pop("beta", None)
        return {"model": self.model, "training_file": self.training_file, "validation_file": self.validation_file,
                "suffix": self.suffix, "seed": self.seed, "metadata": self.metadata,
                "method": {"type": method.type, "hyperparameters": values}}


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class JobErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class Job(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorBody | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = []
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None


class Event(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class Page(BaseModel):
    """OpenAI's list: ``{"object": "list", "data", "has_more", "first_id", "last_id"}``."""

    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, items: list[BaseModel], has_more: bool) -> "Page":
        return cls(data=items, has_more=has_more, first_id=items[0].id if items else None,
                   last_id=items[-1].id if items else None)
