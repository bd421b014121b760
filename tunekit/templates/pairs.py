"""Encoding preference rows (DPO pairs, KTO labelled completions) for TRL's preference trainers.

A preference row arrives from :mod:`tunekit.data` with its prompt already split off::

    {"prompt": [Message…], "chosen": [Message…], "rejected": [Message…], "tools"?: [...], "row": n}
    {"prompt": [Message…], "completion": [Message…], "label": bool, "tools"?: [...], "row": n}

and leaves here as the token columns TRL's collators take (``prompt_ids`` + ``chosen_ids`` /
``rejected_ids``, or ``prompt_ids`` + ``completion_ids`` + ``label``). The prompt ids are the
chat-time prompt (:func:`~tunekit.templates.render.tokenize_chat` with the generation prompt, the
ids the server and ``chat()`` feed the model); each completion is exactly the tokens of its
``{% generation %}`` blocks — the reply's content and its end-of-turn token — encoded as in SFT
training, so control tokens typed into a message stay text. TRL's own tokenization (apply the
template to prompt and prompt+completion, then cut at the common prefix) would also render the
template, but it would let control tokens in messages through and end a completion with the
template's trailing newline instead of the end-of-turn token.
"""

from __future__ import annotations

import logging
from typing import Any

from ..data import RowProblem
from ..errors import TemplateError
from .encoding import IGNORE_INDEX
from .registry import marker_help
from .render import installed_template, tokenize_chat

logger = logging.getLogger("tunekit.templates")

# The keys a template reads from a message: tunekit's weight stays out (as in SFT encoding).
_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


class _Rejected(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _chat(messages: list[dict]) -> list[dict]:
    return [{k: m[k] for k in _MESSAGE_KEYS if k in m} for m in messages]


def _render(tokenizer, source: str, messages: list[dict], tools, **kw):
    import jinja2

    try:
        return tokenize_chat(tokenizer, source, _chat(messages), tools=tools, **kw)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"The chat template has a Jinja syntax error: {e}") from e
    except (jinja2.TemplateError, TypeError) as e:
        raise _Rejected("prompt", f"the chat template rejects this conversation: {e}. Fix the row's "
                                  "messages (roles, order) or choose another template.") from e


def _completion(tokenizer, source: str, prompt: list[dict], reply: list[dict], tools, field: str,
                prompt_ids: list[int]) -> list[int]:
    """The trained tokens of ``reply`` after ``prompt``: its generation blocks, first to last."""
    if not reply:
        raise _Rejected(field, f"{field} is empty: give it the assistant reply.")
    tokens = _render(tokenizer, source, prompt + reply, tools, cut_at_generation=True)
    assistants = sum(1 for m in prompt + reply if m["role"] == "assistant")
    if tokens.blocks != assistants:
        raise TemplateError(
            f"The chat template marked {tokens.blocks} {{% generation %}} blocks for {assistants} assistant "
            "messages; it needs exactly one per assistant message. " + marker_help())
    first_block = sum(1 for m in prompt if m["role"] == "assistant")
    mine = [i for i, owner in enumerate(tokens.owner) if owner >= first_block]
    if not mine:
        raise _Rejected(field, f"{field} has no assistant reply to train on.")
    start, end = mine[0], mine[-1] + 1
    if tokens.ids[:start] != prompt_ids:
        # The template renders the prompt differently alone than before a reply (e.g. one that
        # drops earlier reasoning): the chat-time prompt is what the model will see, so it is
        # what training conditions on.
        logger.warning("the chat template renders this prompt differently before a reply than at chat time; "
                       "training on the chat-time prompt")
    return tokens.ids[start:end]


def _encode_row(example: dict, tokenizer, source: str, max_length: int | None) -> dict:
    prompt = list(example.get("prompt") or [])
    if not prompt:
        raise _Rejected("prompt", "no prompt: give the user turn the replies answer.")
    tools = example.get("tools") or None
    prompt_ids = _render(tokenizer, source, prompt, tools, add_generation_prompt=True).ids
    if "chosen" in example:
        chosen = _completion(tokenizer, source, prompt, list(example["chosen"] or []), tools, "chosen", prompt_ids)
        rejected = _completion(tokenizer, source, prompt, list(example.get("rejected") or []), tools, "rejected",
                               prompt_ids)
        if chosen == rejected:
            raise _Rejected("rejected", "chosen and rejected are the same reply: a pair needs two different "
                                        "replies, or drop the row.")
        encoded = {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}
        longest, field = len(prompt_ids) + max(len(chosen), len(rejected)), "chosen"
    elif "completion" in example:
        completion = _completion(tokenizer, source, prompt, list(example["completion"] or []), tools,
                                 "completion", prompt_ids)
        encoded = {"prompt_ids": prompt_ids, "completion_ids": completion, "label": bool(example["label"])}
        longest, field = len(prompt_ids) + len(completion), "completion"
    else:
        raise _Rejected(None, "neither chosen/rejected nor completion/label: not a preference row.")
    if max_length is not None and longest > max_length:
        raise _Rejected(field, f"{longest} tokens long (prompt and reply), more than max_length={max_length}. "
                               f"Raise max_length (to at least {longest}) or shorten the row.")
    return encoded


def encode_preference_rows(
    examples: list[dict],
    tokenizer,
    *,
    max_length: int | None = None,
    source: str = "data",
    unit: str = "row",
) -> tuple[list[dict | None], list[RowProblem]]:
    """Encode DPO or KTO rows for TRL's collators, returning the problems instead of a verdict
    (as :func:`tunekit.templates.encode_rows` does for chats).

    Args:
        examples: preference rows (see the module doc).
        tokenizer: a tokenizer with the chat template installed.
        max_length: the longest prompt + reply allowed, in tokens; longer rows are problems
            (never truncated).
        source: where the rows came from; a row's own ``"file"`` names it instead.
        unit: what the rows' numbers count (``"line"`` for jsonl).

    Returns:
        ``(encodings, problems)``: per row ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (DPO)
        or ``{"prompt_ids", "completion_ids", "label"}`` (KTO), None where the row is bad.

    Raises:
        TemplateError: the template lacks generation markers (not a row problem).

    Example:
        >>> enc, problems = encode_preference_rows([{"prompt": [{"role": "user", "content": "Hi"}],
        ...     "chosen": [{"role": "assistant", "content": "Hello!"}],
        ...     "rejected": [{"role": "assistant", "content": "What?"}], "row": 1}], tokenizer)  # doctest: +SKIP
    """
    template = installed_template(tokenizer)
    encoded: list[dict | None] = []
    problems: list[RowProblem] = []
    for position, example in enumerate(examples, start=1):
        row = example.get("row", position)
        try:
            encoded.append(_encode_row(example, tokenizer, template, max_length))
        except _Rejected as e:
            encoded.append(None)
            problems.append(RowProblem(example.get("file") or source, row, e.field, e.message, unit))
    return encoded, problems


def sequence_lengths(encoded: dict) -> list[int]:
    """Tokens of each sequence one encoded row puts through the model in training: the chat for
    SFT, prompt + chosen and prompt + rejected for a DPO pair, prompt + completion for KTO."""
    if "chosen_ids" in encoded:
        p = len(encoded["prompt_ids"])
        return [p + len(encoded["chosen_ids"]), p + len(encoded["rejected_ids"])]
    if "completion_ids" in encoded:
        return [len(encoded["prompt_ids"]) + len(encoded["completion_ids"])]
    return [len(encoded["input_ids"])]


def trained_tokens(encoded: dict) -> int:
    """Tokens of one encoded row that carry the loss (the replies; SFT: labels not ignored)."""
    if "chosen_ids" in encoded:
        return len(encoded["chosen_ids"]) + len(encoded["rejected_ids"])
    if "completion_ids" in encoded:
        return len(encoded["completion_ids"])
    return sum(1 for t in encoded["labels"] if t != IGNORE_INDEX)


def preference_columns(encoded: list[dict]) -> dict[str, Any]:
    """Encoded preference rows as the columns of a ``datasets.Dataset`` TRL's collators read."""
    keys = ("prompt_ids", "chosen_ids", "rejected_ids") if encoded and "chosen_ids" in encoded[0] \
        else ("prompt_ids", "completion_ids", "label")
    return {k: [r[k] for r in encoded] for k in keys}
