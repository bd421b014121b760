"""Generating a reply over the pool, whole or piece by piece, with the token counts and finish
reason OpenAI's answers carry. Blocking: the web layer runs these in worker threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
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
    finish_reason: str  # "stop" | "length"


@dataclass
class StreamState:
    """What a streamed reply learns as it goes; read once its pieces are exhausted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: BaseException | None = None


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
        for field in _CONTEXT_FIELDS:
            value = getattr(cfg, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    # A tokenizer without a limit says so with a huge sentinel (int(1e30)).
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


def prompt_tokens(tokenizer, messages: list[dict[str, str]]) -> int:
    """How many tokens the chat-templated prompt (with the assistant turn opened) takes."""
    return int(chatlib.encode_prompt(tokenizer, messages, "cpu")["input_ids"].shape[1])


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
    import torch

    with pool.using(adapter) as (model, tokenizer):
        inputs = chatlib.encode_prompt(tokenizer, request.chat_messages(), model.device)
        _seed(request.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **_generation(request, tokenizer))
    prompt = inputs["input_ids"].shape[1]
    new = out[0][prompt:].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Reply(text, prompt, len(new), finish_reason(new, tokenizer, request.max_new_tokens))


def stream(pool: AdapterPool, adapter: str | None, request: ChatCompletionRequest,
           stop: threading.Event) -> tuple[Iterator[str], StreamState]:
    """Start generating in a worker thread; iterate the returned pieces (blocking).

    Args:
        pool, adapter, request: as for :func:`complete`.
        stop: set it to end generation early (the client went away).

    Returns:
        The text pieces, and the state holding the counts once the pieces are exhausted. An
        error in generation is raised from the iterator.
    """
    import torch

    state = StreamState()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def work():
        try:
            with pool.using(adapter) as (model, tokenizer):
                streamer = _counting_streamer(tokenizer, timeout=600)
                holder["streamer"] = streamer
                inputs = chatlib.encode_prompt(tokenizer, request.chat_messages(), model.device)
                state.prompt_tokens = int(inputs["input_ids"].shape[1])
                ready.set()
                _seed(request.seed)
                with torch.inference_mode():
                    model.generate(**inputs, streamer=streamer, stopping_criteria=_stop_on(stop),
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

    def pieces() -> Iterator[str]:
        ready.wait()
        if state.error is not None:
            raise state.error
        for piece in holder["streamer"]:
            if piece:
                yield piece
        thread.join()
        if state.error is not None:
            raise state.error

    return pieces(), state


def _counting_streamer(tokenizer, **kwargs):
    """A ``TextIteratorStreamer`` that also counts the generated tokens and keeps the last one,
    so a streamed reply can report usage and finish_reason."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
            self.generated = 0
            self.last_token: int | None = None
            self._prompt_seen = False

        def put(self, value):
            if self._prompt_seen:
                ids = value.reshape(-1).tolist()
                self.generated += len(ids)
                if ids:
                    self.last_token = ids[-1]
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
