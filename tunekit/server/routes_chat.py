"""``POST /v1/chat/completions``: one reply, whole or streamed as server-sent events, with tool
calls when the request offers ``tools``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError, DataError, HubError, ModelError, TemplateError, TunekitError
from . import generation, streaming
from .context import ServerContext, context_of
from .errors import APIError, context_exceeded, from_validation, model_not_found, server_error
from .schemas import (AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, FunctionCallOut, ToolCallOut,
                      Usage)

log = logging.getLogger(__name__)

router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> dict | StreamingResponse:
    # The body is read and validated here rather than by FastAPI, so that any content type is
    # taken as JSON (curl -d sends form-encoded) and errors keep OpenAI's shape and wording.
    body = await request.body()
    try:
        req = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as e:
        raise from_validation(e.errors()) from e
    _refuse_legacy(body)
    context = context_of(request)
    adapter = context.adapter_for(req.model)
    await run_in_threadpool(_pull, context, req.model, adapter)
    # Checked before the reply starts: a stream that has begun can no longer answer 400.
    req = await run_in_threadpool(_fit, context, adapter, req)
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if req.stream:
        events = streaming.events(context.pool, adapter, req, ident=ident, created=created)
        return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
    reply = await run_in_threadpool(_complete, context, adapter, req)
    calls = [ToolCallOut(id=c.id, function=FunctionCallOut(**c.to_openai()["function"])) for c in reply.tool_calls]
    message = AssistantMessage(content=reply.text or (None if calls else ""), tool_calls=calls or None)
    choice = Choice(message=message, finish_reason=reply.finish_reason)
    return ChatCompletion(id=ident, created=created, model=req.model, choices=[choice],
                          usage=Usage.of(reply.prompt_tokens, reply.completion_tokens)).model_dump()


class _Legacy(BaseModel):
    """The request fields of OpenAI's deprecated function calling; read only to refuse them."""

    model_config = ConfigDict(extra="ignore")
    functions: Any = None
    function_call: Any = None


def _refuse_legacy(body: bytes) -> None:
    # Ignoring them would answer as if no functions were offered; refusing names the fix.
    legacy = _Legacy.model_validate_json(body)
    for field, instead in (("functions", "tools"), ("function_call", "tool_choice")):
        if getattr(legacy, field) is not None:
            raise APIError(400, f"'{field}' (OpenAI's deprecated function calling) is not supported by this server; "
                                f"send '{instead}' instead.", param=field, code="unsupported_parameter")


def _pull(context: ServerContext, model: str, adapter: str | None) -> None:
    # Pulled before a reply starts and without holding the model: a bad adapter is an error
    # answer, not a broken stream, and a slow download does not stall other requests.
    if adapter is None:
        return
    try:
        context.pool.fetch(adapter)
    except HubError as e:
        if not context.is_listed(model):
            # A name a client brought: the same answer as for any name not served (see unknown()).
            log.info("could not pull %r for a request: %s", model, e)
            raise context.unknown(model) from e
        raise model_not_found(model, f"The model '{model}' could not be pulled: {e}") from e
    except ModelError as e:
        raise APIError(400, f"The model '{model}' cannot be served over {context.base_name}: {e}",
                       param="model", code="model_not_supported") from e


def _fit(context: ServerContext, adapter: str | None, req: ChatCompletionRequest) -> ChatCompletionRequest:
    """The request, its reply limit fitted to the model's context.

    A prompt that fills the context, or one that does not leave room for the ``max_tokens`` the
    request set, is refused as OpenAI refuses it; an unset ``max_tokens`` shrinks to the room left.

    Tool messages are normalised and the tool plan settled here too, so that a request the
    model cannot answer is refused before a stream starts.

    Raises:
        APIError: 400 ``context_length_exceeded``; 400 for malformed tool messages
            (``messages``), tools the template cannot render (``tools``) or a ``tool_choice``
            that cannot be enforced.
    """
    tokenizer = context.pool.tokenizer_for(adapter)
    messages, plan = _tool_checks(tokenizer, req)
    limit = generation.context_length(context.pool.model.config, tokenizer)
    if limit is None:
        return req
    prompt = generation.prompt_tokens(tokenizer, messages, plan)
    if prompt >= limit:
        raise context_exceeded(limit, prompt, req.max_new_tokens if req.max_tokens_given else None)
    if prompt + req.max_new_tokens <= limit:
        return req
    if req.max_tokens_given:
        raise context_exceeded(limit, prompt, req.max_new_tokens)
    return req.model_copy(update={"max_tokens": limit - prompt})


def _tool_checks(tokenizer, req: ChatCompletionRequest):
    try:
        messages = generation.conversation(req)
    except DataError as e:
        raise APIError(400, f"Invalid 'messages': {e}", param="messages", code="invalid_value") from e
    try:
        plan = generation.plan_for(tokenizer, req)
    except TemplateError as e:
        raise APIError(400, f"The model '{req.model}' cannot take tools: {e}", param="tools",
                       code="unsupported_parameter") from e
    except ConfigError as e:
        raise APIError(400, f"Invalid value for 'tool_choice': {e}", param="tool_choice", code="invalid_value") from e
    return messages, plan


def _complete(context: ServerContext, adapter: str | None, req: ChatCompletionRequest) -> generation.Reply:
    try:
        return generation.complete(context.pool, adapter, req)
    except TunekitError as e:
        raise server_error(req.model, e) from e
