"""Generating a reply over the pool, whole or piece by piece, with the token counts, finish
reason and tool calls OpenAI's answers carry. Blocking: the web layer runs these in worker
threads.

When the pool batches (:attr:`tunekit.serve.AdapterPool.batches`) a request goes through
``pool.submit``: concurrent requests, for any adapter or the base, share each forward. Otherwise
(``batching=False``, or a model the scheduler refuses) it takes the model for its whole
generation (``pool.using`` and transformers' ``generate``), one request at a time.

A request with ``tools`` is rendered and read through :func:`tunekit.chat.plan_tools` (the same
template and tool format as training): its reply's calls come back parsed, a streamed reply
holds call syntax back from its text pieces, and ``tool_choice`` other than ``"auto"`` prefills
the start of a call.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import chat as chatlib

if TYPE_CHECKING:  # pragma: no cover
    from ..serve import AdapterPool
    from .schemas import ChatCompletionRequest


@dataclass
class Reply:
    """A whole reply."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    tool_calls: list[chatlib.ToolCall] = field(default_factory=list)


@dataclass
class StreamState:
    """What a streamed reply learns as it goes; read once its pieces are exhausted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: BaseException | None = None
    tool_calls: list[chatlib.ToolCall] = field(default_factory=list)
    cancel: Any = None  # ends the generation (the client went away); set once it has started


def conversation(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages as a chat template takes them: tool calls and results normalised
    as training rows are (:func:`tunekit.chat.to_messages`).

    Raises:
        DataError: a tool message is malformed (arguments that are not JSON, a result that
            answers no call); its ``row`` is None and its message names the message.
    """
    return chatlib.to_messages(request.chat_messages(), tools=request.tool_schemas())


def plan_for(tokenizer, request: ChatCompletionRequest) -> chatlib.ToolPlan | None:
    """How a request with ``tools`` is rendered and read; None for a plain chat.

    Raises:
        TemplateError: the template has no tool support. ConfigError: ``tool_choice`` cannot be
            enforced.
    """
    if request.tools is None:
        return None
    return chatlib.plan_tools(tokenizer, request.tool_schemas(), tool_choice=request.choice,
                              parallel_tool_calls=request.parallel)


def finish_reason(new_ids: list[int], tokenizer, max_tokens: int, *, count: int | None = None) -> str:
    """``"length"`` when the reply was cut at ``max_tokens`` rather than ended by the
    end-of-turn token, else ``"stop"``.

    Args:
        new_ids: the generated ids (or just the last one, with ``count``).
        tokenizer: the tokenizer whose ``eos_token_id`` (an id or a list) ends a turn.
        max_tokens: the request's limit.
        count: how many ids were generated, when ``new_ids`` is not all of them.
    """
    count = len(new_ids) if count is None else count
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    ended = bool(new_ids) and new_ids[-1] in eos_ids
    return "length" if count >= max_tokens and not ended else "stop"


# Where configs keep the number of positions, by model family (Llama/Qwen, GPT-2, T5-style, …).
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config, tokenizer) -> int | None:
    """The most tokens, prompt and reply together, the model takes; None when nothing says.

    Args:
        config: the model's config (``model.config``); a ``text_config`` inside it counts.
        tokenizer: its tokenizer, whose ``model_max_length`` is the fallback.
    """
    for cfg in (config, getattr(config, "text_config", None)):
        for name in _CONTEXT_FIELDS:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    # A tokenizer without a limit says so with a huge sentinel (int(1e30)).
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


def prompt_tokens(tokenizer, messages: list[dict[str, Any]], plan: chatlib.ToolPlan | None = None) -> int:
    """How many tokens the chat-templated prompt (with the assistant turn opened, tools and
    prefill included) takes."""
    return int(chatlib.encode_prompt(tokenizer, messages, "cpu", plan=plan)["input_ids"].shape[1])


def with_calls(finish: str, calls: list, plan: chatlib.ToolPlan | None) -> str:
    """OpenAI's finish_reason for a reply: ``"tool_calls"`` when it called tools of its own accord
    (``tool_choice`` auto or required); a named ``tool_choice`` answers ``"stop"``, as OpenAI does."""
    return "tool_calls" if calls and plan is not None and plan.forced is None else finish


def _submit(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest):
    # OpenAI takes top_p=0; the scheduler needs a positive one: the most likely token alone.
    top_p = request.sampling_top_p or 1e-9
    kwargs: dict[str, Any] = {}
    if request.tools is not None:
        kwargs.update(tools=request.tool_schemas(), tool_choice=request.choice,
                      parallel_tool_calls=request.parallel)
    return pool.submit(request.chat_messages(), adapter=adapter, max_tokens=request.max_new_tokens,
                       temperature=request.sampling_temperature, top_p=top_p, seed=request.seed, **kwargs)


def _complete_batched(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest) -> Reply:
    handle = _submit(pool, adapter, request)
    done = handle.result()
    finish = "length" if done.finish_reason == "length" else "stop"
    return Reply(done.text, done.prompt_tokens, done.completion_tokens,
                 with_calls(finish, done.tool_calls, handle.plan), done.tool_calls)


def _stream_batched(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest,
                    stop: threading.Event) -> tuple[Iterator[str], StreamState]:
    state = StreamState()
    handle = _submit(pool, adapter, request)
    state.cancel = handle.cancel
    if stop.is_set():
        handle.cancel()

    def scheduled(_text: str) -> chatlib.ChatReply:
        # The scheduler parsed the calls itself: the reply is its result, not the text's.
        done = handle.result()
        return chatlib.ChatReply(done.text, done.tool_calls)

    def pieces() -> Iterator[str]:
        text = iter(handle)
        head = [first] if (first := next(text, None)) is not None else []
        plan = handle.plan  # known once the first piece came (or the request ended)
        if plan is None:
            yield from (piece for piece in itertools.chain(head, text) if piece)
        else:
            yield from chatlib.filtered(itertools.chain(head, text), plan, scheduled)
        done = handle.result()
        state.prompt_tokens, state.completion_tokens = done.prompt_tokens, done.completion_tokens
        state.finish_reason = "length" if done.finish_reason == "length" else "stop"
        if plan is not None:
            state.tool_calls = done.tool_calls
            state.finish_reason = with_calls(state.finish_reason, done.tool_calls, plan)

    return pieces(), state


def _seed(seed: int | None) -> None:
    if seed is not None:
        import torch

        torch.manual_seed(seed)


def _generation(request: ChatCompletionRequest, tokenizer) -> dict[str, Any]:
    return chatlib.generation_kwargs(tokenizer, max_new_tokens=request.max_new_tokens,
                                     temperature=request.sampling_temperature, top_p=request.sampling_top_p)


def complete(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest) -> Reply:
    """Answer a request in one piece.

    Args:
        pool: the pool to generate with.
        adapter: the adapter to answer with; None for the base alone.
        request: the validated request.
    """
    if pool.batches:
        return _complete_batched(pool, adapter, request)
    import torch

    messages = conversation(request)
    with pool.using(adapter) as (model, tokenizer):
        plan = plan_for(tokenizer, request)
        inputs = chatlib.encode_prompt(tokenizer, messages, model.device, plan=plan)
        _seed(request.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **chatlib.stopping(tokenizer, inputs, plan),
                                 **_generation(request, tokenizer))
    prompt = inputs["input_ids"].shape[1]
    new = out[0][prompt:].tolist()
    finish = finish_reason(new, tokenizer, request.max_new_tokens)
    if plan is None:
        return Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), prompt, len(new), finish)
    reply = chatlib.reply_from_text(chatlib.decode_reply(tokenizer, new, plan), plan)
    return Reply(reply.content, prompt, len(new), with_calls(finish, reply.tool_calls, plan), reply.tool_calls)


def stream(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest,
           stop: threading.Event) -> tuple[Iterator[str], StreamState]:
    """Start generating in a worker thread; iterate the returned pieces (blocking).

    Args:
        pool, adapter, request: as for :func:`complete`.
        stop: set it to end generation early (the client went away).

    Returns:
        The text pieces, and the state holding the counts (and, with tools, the calls) once the
        pieces are exhausted. With tools the pieces are the reply's text only: call syntax is
        held back and read into ``state.tool_calls`` at the end. An error in generation is
        raised from the iterator.
    """
    if pool.batches:
        return _stream_batched(pool, adapter, request, stop)
    import torch

    state = StreamState()
    ready = threading.Event()
    holder: dict[str, Any] = {}
    messages = conversation(request)

    def work():
        try:
            with pool.using(adapter) as (model, tokenizer):
                plan = holder["plan"] = plan_for(tokenizer, request)
                streamer = _counting_streamer(tokenizer, plan, timeout=600)
                holder["streamer"] = streamer
                inputs = chatlib.encode_prompt(tokenizer, messages, model.device, plan=plan)
                state.prompt_tokens = int(inputs["input_ids"].shape[1])
                ready.set()
                _seed(request.seed)
                criteria = _stop_on(stop)
                criteria.extend(chatlib.stopping(tokenizer, inputs, plan).get("stopping_criteria", []))
                with torch.inference_mode():
                    model.generate(**inputs, streamer=streamer, stopping_criteria=criteria,
                                   **_generation(request, tokenizer))
                state.completion_tokens = streamer.generated
                last = [streamer.last_token] if streamer.last_token is not None else []
                state.finish_reason = finish_reason(last, tokenizer, request.max_new_tokens, count=streamer.generated)
        except BaseException as e:  # surfaced to the reader below
            state.error = e
            ready.set()
            if "streamer" in holder:
                holder["streamer"].end()

    thread = threading.Thread(target=work, name="tunekit-generate", daemon=True)
    thread.start()

    def raw() -> Iterator[str]:
        ready.wait()
        if state.error is not None:
            raise state.error
        for piece in holder["streamer"]:
            if piece:
                yield piece
        thread.join()
        if state.error is not None:
            raise state.error

    def pieces() -> Iterator[str]:
        text = raw()
        first = next(text, None)  # the plan is known once generation has started
        plan = holder.get("plan")
        if plan is None:
            if first is not None:
                yield first
                yield from text
            return
        head = [first] if first is not None else []
        reply = yield from chatlib.filtered(itertools.chain(head, text), plan,
                                            lambda whole: chatlib.reply_from_text(whole, plan))
        state.tool_calls = reply.tool_calls
        state.finish_reason = with_calls(state.finish_reason, reply.tool_calls, plan)

    return pieces(), state


def _counting_streamer(tokenizer, plan: chatlib.ToolPlan | None = None, **kwargs):
    """A ``TextIteratorStreamer`` that also counts the generated tokens and keeps the last one,
    so a streamed reply can report usage and finish_reason. With tools, special tokens are kept
    (a call marker may be one) and only the end of turn and padding left out."""
    from transformers import TextIteratorStreamer

    stops = chatlib.stop_ids(tokenizer) if plan is not None else set()

    class CountingStreamer(TextIteratorStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=plan is None, **kwargs)
            self.generated = 0
            self.last_token: int | None = None
            self._prompt_seen = False

        def put(self, value):
            if self._prompt_seen:
                ids = value.reshape(-1).tolist()
                self.generated += len(ids)
                if ids:
                    self.last_token = ids[-1]
                if stops:
                    kept = [i for i in ids if i not in stops]
                    if not kept:
                        return
                    value = value.new_tensor(kept)
            else:
                self._prompt_seen = True  # generate() hands over the prompt first
            super().put(value)

    return CountingStreamer()


def _stop_on(event: threading.Event):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        """Ends generation when the client of a streamed reply disconnects."""

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnEvent()])
