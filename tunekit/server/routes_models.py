"""``GET /v1/models`` and ``GET /v1/models/{id}``: the base's name, then the adapters."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .context import ServerContext, context_of
from .errors import model_not_found
from .schemas import Model, ModelList

router = APIRouter()


def model_card(context: ServerContext, model_id: str) -> Model:
    """The ``/v1/models`` entry for one model id; adapters name the base as their ``parent``."""
    # A Hub id's owner; folders and bare names belong to tunekit.
    owner = model_id.split("/")[0] if "/" in model_id and not model_id.startswith((".", "/")) else "tunekit"
    if model_id.startswith("ft:"):  # a fine-tuning job's model, ft:<base>:<owner>:<suffix>:<job>
        owner = model_id.split(":")[2]
    parent = context.base_name if model_id != context.base_name else None
    return Model(id=model_id, created=context.created, owned_by=owner, parent=parent)


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(request: Request) -> ModelList:
    context = context_of(request)
    return ModelList(data=[model_card(context, m) for m in context.model_ids()])


@router.get("/v1/models/{model_id:path}", response_model_exclude_none=True)
async def get_model(request: Request, model_id: str) -> Model:
    context = context_of(request)
    if model_id not in context.model_ids():
        raise model_not_found(model_id)
    return model_card(context, model_id)
