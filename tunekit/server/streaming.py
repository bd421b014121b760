"""A streamed reply as server-sent events: a role chunk, content chunks, tool-call chunks, a
chunk with the finish_reason, a usage chunk when asked, then ``data: [DONE]``.

Tool calls stream the way OpenAI streams them, so the official client's stream helpers
assemble them: per call, a first delta with its ``index``, ``id``, ``type``, the function's
name and empty ``arguments``, then deltas with ``index`` and the arguments' JSON in fragments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import generation
from .errors import server_error
from .schemas import ChatCompletionChunk, ChunkChoice, Delta, FunctionDelta, ToolCallDelta, Usage

if TYPE_CHECKING:  # pragma: no cover
    from ..serve import AdapterPool
    from .schemas import ChatCompletionRequest

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def event(chunk: ChatCompletionChunk, *, with_usage: bool) -> str:
    """One ``data:`` line; ``usage`` is in every chunk (null until the last) or in none."""
    return f"data: {chunk.model_dump_json(exclude=None if with_usage else {'usage'})}\n\n"


async def events(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest, *, ident: str,
                 created: int) -> AsyncIterator[str]:
    """Generate in a worker thread and yield its pieces as events, stopping the generation when
    the client goes away (the generator is closed).

    Args:
        pool: the pool to generate with.
        adapter: the adapter to answer with; None for the base alone.
        request: the validated request (``stream: true``).
        ident: the reply's ``id`` (``chatcmpl-…``), shared by every chunk.
        created: the reply's Unix time.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    usage = request.include_usage

    def chunk(delta: Delta | None, finish: str | None = None, totals: Usage | None = None) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        body = ChatCompletionChunk(id=ident, created=created, model=request.model, choices=choices, usage=totals)
        return event(body, with_usage=usage)

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    started: dict = {}  # the generation's state, once _pump has started it (to cancel it)
    loop.run_in_executor(None, _pump, put, pool, adapter, request, stop, started)
    try:
        yield chunk(Delta(role="assistant", content=""))
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                log.error("streamed generation failed: %s", item)
                yield f"data: {json.dumps(server_error(request.model, item).body())}\n\n"
                break
            if isinstance(item, generation.StreamState):  # the end
                for delta in tool_call_deltas(item.tool_calls):
                    yield chunk(delta)
                yield chunk(Delta(), item.finish_reason)
                if usage:
                    yield chunk(None, totals=Usage.of(item.prompt_tokens, item.completion_tokens))
                break
            yield chunk(Delta(content=item))
        yield DONE
    finally:
        # Client gone (or done): stop generating so the model (or the batch row) is free.
        stop.set()
        state = started.get("state")
        if state is not None and state.cancel is not None:
            state.cancel()


# Argument fragments end after a JSON punctuation mark or a run of word characters, about the
# pieces a tokenizer would make.
_FRAGMENT = re.compile(r'\s*(?:[\w.-]+|"[^"]{0,16}"?|.)')


def tool_call_deltas(calls) -> list[Delta]:
    """The deltas that stream ``calls`` (:class:`tunekit.chat.ToolCall`) as OpenAI does."""
    deltas = []
    for index, call in enumerate(calls):
        wire = call.to_openai()
        deltas.append(Delta(tool_calls=[ToolCallDelta(index=index, id=call.id, type="function", function=FunctionDelta(
            name=call.name, arguments=""))]))
        arguments = wire["function"]["arguments"]
        for piece in _FRAGMENT.findall(arguments):
            deltas.append(Delta(tool_calls=[ToolCallDelta(index=index, function=FunctionDelta(arguments=piece))]))
    return deltas


def _pump(put, pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest, stop: threading.Event,
          started: dict) -> None:
    # Runs in a worker thread: hands the generation's pieces to the event loop, then the final
    # state (or the error).
    try:
        pieces, state = generation.stream(pool, adapter, request, stop)
        started["state"] = state
        if stop.is_set() and state.cancel is not None:  # the client left while it was starting
            state.cancel()
        first = True
        for piece in pieces:
            if first:  # the reply starts at its first visible character
                piece, first = piece.lstrip(), not piece.strip()
                if not piece:
                    continue
            put(piece)
        put(state)
    except BaseException as e:
        put(e)
