"""vLLM's runtime adapter management: ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``, with vLLM's bodies (``lora_name``, ``lora_path``) and answers
(200 with a plain-text ``Success: …`` line; 400 or 404 with the error), so scripts written for
vLLM work unchanged. Off unless the server was started with ``allow_runtime_lora`` (vLLM needs
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), behind the API key like every route.

``lora_path`` is a Hub id; a folder only inside the operator's ``lora_root``, so a request never
names the server's disk otherwise (the rule of ``ServerContext.adapter_for``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..errors import TunekitError
from .context import context_of
from .errors import APIError

router = APIRouter()


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for ``/v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""
    lora_path: str = ""


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body for ``/v1/unload_lora_adapter`` (``lora_int_id`` is accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""
    lora_int_id: int | None = None


def _disabled() -> APIError:
    return APIError(404, "Runtime LoRA loading is off on this server; start it with --allow-runtime-lora.",
                    type="NotFoundError", code="not_found")


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request, body: LoadLoRAAdapterRequest):
    context = context_of(request)
    if not context.allow_runtime_lora:
        raise _disabled()
    if not body.lora_name or not body.lora_path:
        raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", type="InvalidUserInput")
    name = context.check_lora_name(body.lora_name)
    # A name the pool already holds may be another key's fine-tune (``ft:…``, hidden from this
    # caller by the Jobs API): loading over it would replace that tenant's model.
    if context.is_listed(name) or name in context.pool.registered or name.startswith("ft:"):
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", type="InvalidUserInput")
    source = context.lora_source(body.lora_path)
    try:
        await run_in_threadpool(context.pool.add, source, name=name)
    except TunekitError as e:
        # One wording whatever went wrong, as for /v1/chat/completions: nothing about the disk.
        raise APIError(400, f"The lora adapter '{name}' could not be loaded from '{body.lora_path}': "
                            f"{type(e).__name__}.", type="BadRequestError") from e
    context.adapters.append(name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request, body: UnloadLoRAAdapterRequest):
    context = context_of(request)
    if not context.allow_runtime_lora:
        raise _disabled()
    if not body.lora_name and body.lora_int_id is None:
        raise APIError(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", type="InvalidUserInput")
    name = body.lora_name
    if name not in context.adapters:
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", type="NotFoundError")
    context.adapters.remove(name)
    if name in context.pool.registered:
        await run_in_threadpool(context.pool.remove, name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
