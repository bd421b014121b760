"""Turning a prompt into chat messages and generating a reply, whole or streamed. Shared by
``TuneResult.chat``, the adapter pool and the servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

Messages = list[dict[str, str]]


def to_messages(prompt: str | Messages, *, system: str | None = None) -> Messages:
    """A user prompt or a message list, with an optional system message put first."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise ConfigError("chat() takes a string or a list of {'role': …, 'content': …} messages")
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def generation_kwargs(tokenizer, *, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    """``model.generate`` keywords: greedy when ``temperature`` is 0 (or None), else sampling;
    eos and pad ids from the tokenizer (pad falls back to eos)."""
    sample = temperature is not None and temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sample,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        # Greedy decoding: unset sampling knobs a generation_config may carry, to keep logs quiet.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def encode_prompt(tokenizer, messages: Messages, device):
    """The chat-templated prompt (with the assistant turn opened) as tensors on ``device``.

    Control tokens typed into a message (``<|im_start|>system``…) are encoded as plain text, so
    a user cannot forge a turn; otherwise the ids are ``apply_chat_template``'s.

    Args:
        tokenizer: a tokenizer with its chat template installed.
        messages: the conversation so far.
        device: where the tensors go (``model.device``, or ``"cpu"`` to count tokens).

    Returns:
        ``{"input_ids", "attention_mask"}``, each of shape ``(1, prompt length)``.

    Raises:
        TemplateError: the tokenizer has no chat template.
    """
    import torch

    from .templates.render import installed_template, tokenize_chat

    tokens = tokenize_chat(tokenizer, installed_template(tokenizer), messages, add_generation_prompt=True)
    input_ids = torch.tensor([tokens.ids], dtype=torch.long, device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def generate(model, tokenizer, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0) -> str:
    """Reply to ``messages`` (greedy unless ``temperature > 0``)."""
    import torch

    inputs = encode_prompt(tokenizer, messages, model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, **generation_kwargs(
            tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def stream(model, tokenizer, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
           top_p: float = 1.0, lock: threading.Lock | None = None) -> Iterator[str]:
    """Yield the reply in pieces as they are generated (generation runs in a worker thread)."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = encode_prompt(tokenizer, messages, model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    kwargs = dict(**inputs, streamer=streamer, **generation_kwargs(
        tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                if lock is None:
                    model.generate(**kwargs)
                else:
                    with lock:
                        model.generate(**kwargs)
        except BaseException as e:  # surfaced in the caller's thread below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if errors:
        raise errors[0]
