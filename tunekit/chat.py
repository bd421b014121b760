"""Turning a prompt into chat messages and generating a reply, whole or streamed, with or
without tools. Shared by ``TuneResult.chat``, the adapter pool, the servers and the Space.

A chat with ``tools`` answers a :class:`ChatReply` (its text and parsed :class:`ToolCall` s)
rather than a string. The prompt is rendered exactly as training rendered it (the same
template, through :func:`tunekit.templates.render.tokenize_chat`, with the tools passed to the
template), and the reply is read back in the template's tool format
(:mod:`tunekit.templates.tools`). ``tool_choice`` works by prefilling: ``"required"`` starts
the reply with the format's call opener, a function's name with the opener of a call to it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, TemplateError

Messages = list[dict[str, Any]]

# Message keys of tool calling, kept (and normalised) when a conversation has them.
_TOOL_KEYS = ("tool_calls", "tool_call_id", "name", "function_call")


def to_messages(prompt: str | Messages, *, system: str | None = None,
                tools: list[dict] | None = None) -> Messages:
    """A user prompt or a message list, with an optional system message put first.

    Messages that take part in tool calling (an assistant's ``tool_calls``, ``role: "tool"``
    results, the legacy ``function_call`` / ``role: "function"``) are normalised the way
    training rows are (:func:`tunekit.data.tools.normalise_messages`: arguments parsed into
    dicts, each result named after its call), so serving renders what training rendered.

    Raises:
        ConfigError: ``prompt`` is neither a string nor a list of messages.
        DataError: a tool message is malformed (arguments that are not JSON, a result that
            answers no call).
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and
                                          ("content" in m or m.get("tool_calls") or m.get("function_call"))
                                          for m in prompt):
        messages = [{"role": m["role"], "content": m.get("content")} | {k: m[k] for k in _TOOL_KEYS if k in m}
                    for m in prompt]
    else:
        raise ConfigError("chat() takes a string or a list of {'role': …, 'content': …} messages")
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    if any(_is_tool_message(m) for m in messages):
        from .data.tools import normalise_messages

        messages = normalise_messages(messages, tools)
    else:
        for m in messages:
            m.pop("name", None)  # a user's display name is no part of the template's input
    return messages


def _is_tool_message(message: dict) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call")
                or message.get("role") in ("tool", "function"))


# -- tool calls ----------------------------------------------------------------------------------
@dataclass
class ToolCall:
    """A function call the model made.

    Attributes:
        id: ``call_…``, what the ``tool`` message with the result answers to (``tool_call_id``).
        name: the function's name.
        arguments: its arguments, parsed.
    """

    id: str
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """The call as OpenAI's API writes it: ``arguments`` as a JSON string."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass
class ChatReply:
    """The assistant's reply to a chat with tools.

    Attributes:
        content: the text (empty when the reply is only calls); ``str(reply)`` is this.
        tool_calls: the calls it made, in order (empty when it answered in text).

    Example:
        >>> reply = result.chat("Weather in Paris?", tools=TOOLS)        # doctest: +SKIP
        >>> for call in reply.tool_calls:                                   # doctest: +SKIP
        ...     messages += [reply.message, {"role": "tool", "tool_call_id": call.id,
        ...                                  "content": get_weather(**call.arguments)}]
    """

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __str__(self) -> str:
        return self.content

    @property
    def message(self) -> dict[str, Any]:
        """The reply as the next message of the conversation (pass it back with the results)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return out


def new_call_id() -> str:
    """A fresh call id, shaped like OpenAI's (``call_`` and 24 characters)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolPlan:
    """How one chat with tools is rendered and read.

    Attributes:
        template: the Jinja source the prompt is rendered with.
        tools: the schemas the template offers (None with ``tool_choice="none"``).
        style: the tool format (:func:`tunekit.templates.tools.tool_style`).
        prefix: text prefilled after the generation prompt (``tool_choice`` other than auto).
        forced: the function a named ``tool_choice`` calls.
        parallel: whether several calls may be returned.
        reads_calls: False with ``tool_choice="none"``: the reply is all text.
    """

    template: str
    tools: list[dict] | None
    style: str | None
    prefix: str = ""
    forced: str | None = None
    parallel: bool = True
    reads_calls: bool = True


def plan_tools(tokenizer, tools: list[dict] | None, *, tool_choice: str | dict | None = "auto",
               parallel_tool_calls: bool = True) -> ToolPlan:
    """Settle how a chat with ``tools`` is rendered and read, for one tokenizer.

    The template is the tokenizer's own (a tuned run's tokenizer carries the one it was trained
    with). A template with no tool support falls back to the shipped template of its family
    when that one has tools (SmolLM2's ChatML → tunekit's chatml, Hermes style): the template
    a run on that base trains with, so base and fine-tune see the same prompt.

    Args:
        tokenizer: the tokenizer, with its chat template.
        tools: OpenAI function schemas.
        tool_choice: ``"auto"`` (the model decides), ``"none"`` (the tools are not offered:
            the template renders no tool list and the reply is read as text), ``"required"``
            (some call) or a function's name (``{"type": "function", "function": {"name"}}``
            too): a call of it.
        parallel_tool_calls: False returns at most one call.

    Returns:
        The :class:`ToolPlan`.

    Raises:
        TemplateError: the chat template has no tool support.
        ConfigError: ``tool_choice`` names a function not in ``tools``, or forces a call in a
            format with no known call syntax.
    """
    from .templates import tools as toolfmt
    from .templates.render import installed_template

    choice = _choice_name(tool_choice)
    source = installed_template(tokenizer)
    style = toolfmt.tool_style(source)
    if choice == "none":
        return ToolPlan(source, None, style, parallel=parallel_tool_calls, reads_calls=False)
    names = [_function_name(t) for t in tools or []]
    if choice not in ("auto", "required") and choice not in names:
        raise ConfigError(f"tool_choice names {choice!r}, which is not among the tools ({', '.join(names) or 'none'})")
    if choice == "required" and not names:
        raise ConfigError("tool_choice='required' needs tools")
    if style is None and names:
        from .templates.registry import resolve_template

        fallback = resolve_template(tokenizer)
        style = toolfmt.tool_style(fallback.source)
        if style is None:
            raise TemplateError("This model's chat template has no tool support, and tunekit ships none for its "
                                f"family ({fallback.name}); pick a template with tools (template='chatml').")
        source = fallback.source
    prefix, forced = "", None
    if choice != "auto":
        forced = None if choice == "required" else choice
        try:
            prefix = toolfmt.call_prefix(style, forced)
        except ValueError as e:
            raise ConfigError(f"tool_choice={choice!r} cannot be enforced for this template's tool format: {e}") from e
    return ToolPlan(source, tools, style, prefix, forced, parallel_tool_calls)


def _choice_name(choice: str | dict | None) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"tool_choice must be 'auto', 'none', 'required', a function name or "
                              f"{{'type': 'function', 'function': {{'name': …}}}}, got {choice!r}")
        return name
    if not isinstance(choice, str) or not choice:
        raise ConfigError(f"tool_choice must be 'auto', 'none', 'required' or a function name, got {choice!r}")
    return choice


def _function_name(tool: dict) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    return function.get("name") if isinstance(function, dict) else None


def reply_from_text(text: str, plan: ToolPlan) -> ChatReply:
    """Read a generated reply: its calls in the plan's format, the rest as text.

    Args:
        text: the prefill and what the model generated after it (special tokens kept, the
            end-of-turn token dropped).
        plan: the chat's :class:`ToolPlan`.

    Returns:
        The reply. Text that does not parse as a call stays content, prefill included: this
        never raises on model output.
    """
    from .templates import tools as toolfmt

    if not plan.reads_calls:
        return ChatReply(text.strip())
    content, calls = toolfmt.parse_reply(text, plan.style)
    if plan.forced is not None:
        calls = [c for c in calls if c["name"] == plan.forced][:1] or _closed_call(text, plan)
        if calls:
            content = content if content != text else ""
    if not plan.parallel:
        calls = calls[:1]
    if not calls:
        return ChatReply(text.strip())
    return ChatReply(content.strip(), [ToolCall(new_call_id(), c["name"], c["arguments"]) for c in calls])


def _closed_call(text: str, plan: ToolPlan) -> list[dict]:
    """A forced call read from its arguments alone: generation stops once the arguments'
    object closes (see :func:`_arguments_closed`), before the format's closing text."""
    rest = text[len(plan.prefix):].lstrip() if text.startswith(plan.prefix) else ""
    arguments = _leading_object(rest)
    return [] if arguments is None else [{"name": plan.forced, "arguments": arguments}]


_DECODER = json.JSONDecoder()


def _leading_object(text: str) -> dict | None:
    if not text.startswith("{"):
        return None
    try:
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# Where a call starts in each format: anywhere in the reply, or only at its start.
_MARKS_ANYWHERE = {"hermes": ("<tool_call>",), "mistral": ("[TOOL_CALLS]",)}
_MARKS_AT_START = {"llama-3.1": ("{", "[", "<|python_tag|>")}


class ContentFilter:
    """Streamed text, split into what can be shown as it comes and what is held back because
    it may be the start of a tool call; once the reply is read, :meth:`finish` gives the rest of
    its content. Trailing whitespace is held too, so the pieces shown join to the reply's
    content exactly.

    Args:
        plan: the chat's :class:`ToolPlan`.
    """

    def __init__(self, plan: ToolPlan):
        style = plan.style or ""
        every = style == "template"
        self.reads_calls = plan.reads_calls
        self.anywhere = sum(_MARKS_ANYWHERE.values(), ()) if every else _MARKS_ANYWHERE.get(style, ())
        self.at_start = sum(_MARKS_AT_START.values(), ()) if every else _MARKS_AT_START.get(style, ())
        self.text = ""
        self.shown = 0

    def feed(self, piece: str) -> str:
        """Take the next piece; return the text that can be shown now (may be empty)."""
        self.text += piece
        body = self.text.lstrip()
        end = len(body)
        if self.reads_calls:
            if self.at_start and any(body.startswith(m) or m.startswith(body) for m in self.at_start):
                end = 0
            for mark in self.anywhere:
                at = body.find(mark)
                if at >= 0:
                    end = min(end, at)
                else:  # a mark may be starting at the end
                    for k in range(min(len(mark) - 1, len(body)), 0, -1):
                        if body.endswith(mark[:k]):
                            end = min(end, len(body) - k)
                            break
        end = len(body[:end].rstrip())
        out = body[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out

    def finish(self, reply: ChatReply) -> str:
        """The content not shown yet, once ``reply`` has been read from all the text."""
        shown = self.text.lstrip()[:self.shown]
        return reply.content[len(shown):] if reply.content.startswith(shown) else ""


def filtered(pieces: Iterable[str], plan: ToolPlan,
             reply_of: Callable[[str], ChatReply]) -> Generator[str, None, ChatReply]:
    """Stream ``pieces`` of a reply with call syntax held back (:class:`ContentFilter`), then the
    content still held; returns the :class:`ChatReply` that ``reply_of`` makes of the whole text
    (``reply = yield from filtered(...)``). One place for ``chat(stream=True)`` and both of the
    server's streaming paths."""
    shown = ContentFilter(plan)
    if plan.prefix:
        shown.feed(plan.prefix)
    for piece in pieces:
        out = shown.feed(piece)
        if out:
            yield out
    reply = reply_of(shown.text)
    rest = shown.finish(reply)
    if rest:
        yield rest
    return reply


class ReplyStream:
    """A streamed reply to a chat with tools: iterate it for the text as it comes (call syntax
    held back); once exhausted, ``reply`` holds the :class:`ChatReply` with the calls.

    Example:
        >>> stream = result.chat("Weather in Paris?", tools=TOOLS, stream=True)  # doctest: +SKIP
        >>> text = "".join(stream); stream.reply.tool_calls                        # doctest: +SKIP
    """

    def __init__(self, pieces: Iterator[str], plan: ToolPlan):
        self._pieces, self._plan = pieces, plan
        self.reply: ChatReply | None = None

    def __iter__(self) -> Iterator[str]:
        self.reply = yield from filtered(self._pieces, self._plan, lambda text: reply_from_text(text, self._plan))


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


def encode_prompt(tokenizer, messages: Messages, device, *, plan: ToolPlan | None = None,
                  tools: list[dict] | None = None):
    """The chat-templated prompt (with the assistant turn opened) as tensors on ``device``.

    Control tokens typed into a message (``<|im_start|>system``…) are encoded as plain text, so
    a user cannot forge a turn; otherwise the ids are ``apply_chat_template``'s.

    Args:
        tokenizer: a tokenizer with its chat template installed.
        messages: the conversation so far.
        device: where the tensors go (``model.device``, or ``"cpu"`` to count tokens).
        plan: for a chat with tools, the template and tools to render with and the prefill
            that follows the generation prompt (:func:`plan_tools`).
        tools: without a plan, function schemas passed to the installed template as they are
            (no fallback template, no prefill); a plan's own tools win.

    Returns:
        ``{"input_ids", "attention_mask"}``, each of shape ``(1, prompt length)``.

    Raises:
        TemplateError: the tokenizer has no chat template.
    """
    import torch

    from .templates.render import installed_template, tokenize_chat

    source = plan.template if plan is not None else installed_template(tokenizer)
    tools = plan.tools if plan is not None else tools
    ids = tokenize_chat(tokenizer, source, messages, tools=tools, add_generation_prompt=True).ids
    if plan is not None and plan.prefix:
        ids = ids + continuation_ids(tokenizer, plan.prefix)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` as they are after other text (no prefix space, no BOS): what training's
    encoding of a reply cut at its generation block gives, so a prefill matches training."""
    newline = tokenizer.encode("\n", add_special_tokens=False)
    ids = tokenizer.encode("\n" + text, add_special_tokens=False)
    return ids[len(newline):] if ids[:len(newline)] == newline else tokenizer.encode(text, add_special_tokens=False)


def stop_ids(tokenizer) -> set[int]:
    """The ids a reply's text leaves out: the end-of-turn token(s) and padding."""
    eos = tokenizer.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos}
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)
    return {i for i in ids if i is not None}


def decode_reply(tokenizer, new_ids: list[int], plan: ToolPlan) -> str:
    """The text :func:`reply_from_text` reads: the prefill, then the generated ids with special
    tokens kept (a format's call marker may be one, as Mistral's ``[TOOL_CALLS]``), the end of
    turn dropped."""
    stops = stop_ids(tokenizer)
    while new_ids and new_ids[-1] in stops:
        new_ids = new_ids[:-1]
    return plan.prefix + tokenizer.decode(new_ids, skip_special_tokens=False)


def arguments_closed(tokenizer, prompt_length: int, plan: ToolPlan):
    """A stopping criterion for a named ``tool_choice``: generation ends once the arguments'
    JSON object is complete, so the call is whole whatever the model writes after it (None for
    other plans)."""
    if plan.forced is None:
        return None
    from transformers import StoppingCriteria

    class ArgumentsClosed(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            text = tokenizer.decode(input_ids[0, prompt_length:].tolist(), skip_special_tokens=False).lstrip()
            done = bool(text) and (not text.startswith("{") or _leading_object(text) is not None)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return ArgumentsClosed()


def stopping(tokenizer, inputs, plan: ToolPlan | None) -> dict[str, Any]:
    """``model.generate``'s ``stopping_criteria`` for a plan that needs one, else nothing."""
    criterion = arguments_closed(tokenizer, inputs["input_ids"].shape[1], plan) if plan is not None else None
    if criterion is None:
        return {}
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([criterion])}


def generate(model, tokenizer, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, tools: list[dict] | None = None, tool_choice: str | dict | None = "auto",
             parallel_tool_calls: bool = True) -> str | ChatReply:
    """Reply to ``messages`` (greedy unless ``temperature > 0``).

    Returns:
        The text; with ``tools``, a :class:`ChatReply` (see :func:`plan_tools` for
        ``tool_choice`` and ``parallel_tool_calls``).
    """
    import torch

    plan = None
    if tools is not None:
        plan = plan_tools(tokenizer, tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
    inputs = encode_prompt(tokenizer, messages, model.device, plan=plan)
    with torch.inference_mode():
        out = model.generate(**inputs, **stopping(tokenizer, inputs, plan), **generation_kwargs(
            tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
    new = out[0][inputs["input_ids"].shape[1]:].tolist()
    if plan is None:
        return tokenizer.decode(new, skip_special_tokens=True).strip()
    return reply_from_text(decode_reply(tokenizer, new, plan), plan)


def text_streamer(tokenizer, *, plan: ToolPlan | None, **kwargs):
    """A ``TextIteratorStreamer`` for a reply: special tokens skipped, or, for a chat with tools,
    kept (a call marker may be one) with the end-of-turn and padding ids left out."""
    from transformers import TextIteratorStreamer

    if plan is None:
        return TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
    stops = stop_ids(tokenizer)

    class ToolStreamer(TextIteratorStreamer):
        def put(self, value):
            if self.next_tokens_are_prompt:
                return super().put(value)
            kept = [i for i in value.reshape(-1).tolist() if i not in stops]
            if kept:
                super().put(value.new_tensor(kept))

    return ToolStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False, **kwargs)


def stream(model, tokenizer, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
           top_p: float = 1.0, lock: threading.Lock | None = None, tools: list[dict] | None = None,
           tool_choice: str | dict | None = "auto", parallel_tool_calls: bool = True) -> Iterator[str]:
    """Yield the reply in pieces as they are generated (generation runs in a worker thread).

    With ``tools``, a :class:`ReplyStream`: the text pieces, then ``.reply`` with the calls.
    """
    plan = None
    if tools is not None:
        plan = plan_tools(tokenizer, tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
        return ReplyStream(_pieces(model, tokenizer, messages, plan, lock, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p), plan)
    return _pieces(model, tokenizer, messages, plan, lock, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p)


def _pieces(model, tokenizer, messages: Messages, plan: ToolPlan | None, lock: threading.Lock | None,
            **sampling: Any) -> Iterator[str]:
    import torch

    inputs = encode_prompt(tokenizer, messages, model.device, plan=plan)
    streamer = text_streamer(tokenizer, plan=plan, timeout=600)
    kwargs = dict(**inputs, streamer=streamer, **stopping(tokenizer, inputs, plan),
                  **generation_kwargs(tokenizer, **sampling))
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
