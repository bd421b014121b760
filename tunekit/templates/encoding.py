"""Encoding rows for training: token ids, and labels that carry loss only where they should.

A chat row is rendered with the tokenizer's installed template and tokenized piece by piece at
the edges of its ``{% generation %}`` blocks (:func:`~tunekit.templates.render.tokenize_chat`),
so the trained tokens are exactly each assistant message's content and end-of-turn token, and
control tokens typed into a message stay plain text. Bad rows are reported with
``tunekit.data``'s :class:`~tunekit.data.RowProblem`, the same wording the reader uses.
"""

from __future__ import annotations

import logging
from typing import Literal

from ..data import RowProblem, bad_rows_error, skipped_message
from ..errors import ConfigError, TemplateError
from .registry import marker_help
from .render import ChatTokens, PrefixMismatch, installed_template, template_messages, tokenize_chat
from .tools import tool_style

logger = logging.getLogger("tunekit.templates")

IGNORE_INDEX = -100
"""Label of a token that carries no loss (what PyTorch's cross-entropy and transformers ignore)."""

_TRAIN_ON = ("assistant", "all")
_ON_BAD_ROWS = ("raise", "skip")


def check_options(train_on: str, on_bad_rows: str = "raise") -> None:
    """Raise one ``ConfigError`` naming every bad ``train_on`` / ``on_bad_rows`` value."""
    problems = []
    if train_on not in _TRAIN_ON:
        problems.append(f"train_on={train_on!r}: use one of {', '.join(map(repr, _TRAIN_ON))}")
    if on_bad_rows not in _ON_BAD_ROWS:
        problems.append(
            f"on_bad_rows={on_bad_rows!r}: use one of {', '.join(map(repr, _ON_BAD_ROWS))}"
        )
    if problems:
        raise ConfigError(problems)


class _Rejected(Exception):
    """This row cannot be used: ``encode`` raises it as a DataError, ``encode_all`` lists it."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _tokenize_row(tokenizer, example: dict) -> ChatTokens:
    """Render and encode a chat row with the installed template, telling template faults from
    row faults. Control tokens typed into a message are encoded as text (:func:`tokenize_chat`)."""
    import jinja2

    source = installed_template(tokenizer)
    chat = template_messages(example["messages"])
    tools = example.get("tools") or None
    if (tools or any(m["role"] == "tool" or m.get("tool_calls") for m in chat)) and tool_style(source) is None:
        # Not a row problem: every tool row would fail the same way.
        raise TemplateError(
            "This chat template has no tool-calling format, and the data has tools or tool calls "
            f"({'a row' if example.get('row') is None else 'row ' + str(example['row'])}). Templates "
            "with one: chatml and qwen-2 (hermes), llama-3 (llama-3.1), mistral; or the base's own "
            "template when it renders tools (Qwen2.5, Llama 3.1, Mistral v0.3, …)."
        )
    try:
        return tokenize_chat(tokenizer, source, chat, tools=tools, cut_at_generation=True)
    except PrefixMismatch as e:
        raise _Rejected("messages", str(e)) from e
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"The chat template has a Jinja syntax error: {e}") from e
    except (jinja2.TemplateError, TypeError) as e:
        # raise_exception() in a template (e.g. roles that do not alternate), or content of the
        # wrong type, is about this row, not the template.
        raise _Rejected(
            "messages",
            f"the chat template rejects this conversation: {e}. Fix the row's messages (roles, "
            "order) or choose another template.",
        ) from e


def _encode_messages(example: dict, tokenizer, train_on: str) -> tuple[list[int], list[int]]:
    # Cut at the generation blocks, so the trained tokens are exactly each block's text
    # (tokenize_chat's cut_at_generation says why).
    tokens = _tokenize_row(tokenizer, example)
    assistant = [m for m in example["messages"] if m["role"] == "assistant"]
    if tokens.blocks != len(assistant):
        row = example.get("row")
        raise TemplateError(
            f"The chat template marked {tokens.blocks} {{% generation %}} blocks for "
            f"{len(assistant)} assistant messages ({'a row' if row is None else f'row {row}'}); "
            "it needs exactly one per assistant message. " + marker_help()
        )
    ids, owner = tokens.ids, tokens.owner
    if train_on == "all":
        return ids, list(ids)
    # A missing or null weight means 1: only an explicit 0 keeps a reply as context.
    trained_spans = {i for i, m in enumerate(assistant) if m.get("weight") is None or m["weight"]}
    labels = [t if o in trained_spans else IGNORE_INDEX for t, o in zip(ids, owner)]
    return ids, labels


def _encode_text(example: dict, tokenizer) -> list[int]:
    # add_special_tokens=True: plain text gets the tokenizer's own BOS (e.g. Llama), as in
    # pre-training; no chat template is involved, so there is no risk of a second one.
    ids = list(tokenizer(example["text"], add_special_tokens=True)["input_ids"])
    eos_id = tokenizer.eos_token_id
    if eos_id is not None and ids[-1:] != [eos_id]:
        ids.append(eos_id)
    return ids


def _encode_row(example: dict, tokenizer, train_on: str, max_length: int | None) -> dict:
    """:func:`encode` after its option check; a bad row raises ``_Rejected``."""
    if "messages" in example:
        field = "messages"
        ids, labels = _encode_messages(example, tokenizer, train_on)
    elif "text" in example:
        field = "text"
        ids = _encode_text(example, tokenizer)
        labels = list(ids)
    else:
        raise _Rejected(None, "neither 'messages' nor 'text'; normalise it with tunekit.data "
                              "first.")
    if max_length is not None and len(ids) > max_length:
        raise _Rejected(
            field,
            f"{len(ids)} tokens long, more than max_length={max_length}. Raise max_length (to at "
            f"least {len(ids)}) or shorten or split the row.",
        )
    if all(label == IGNORE_INDEX for label in labels):
        raise _Rejected(
            field,
            "no token to train on (no assistant message with weight 1). Give it an assistant "
            "reply, set a weight to 1, or drop the row.",
        )
    return {"input_ids": ids, "labels": labels}


def encode(
    example: dict,
    tokenizer,
    *,
    train_on: Literal["assistant", "all"] = "assistant",
    max_length: int | None = None,
) -> dict:
    """Tokenize one row and build its labels.

    Args:
        example: a normalised row (:class:`tunekit.data.Example`):
            ``{"messages": [{"role", "content", "weight"?}, …], "row": n}`` or
            ``{"text": str, "row": n}``. ``weight`` (default 1) only matters for assistant
            messages: 0 keeps the turn as context without training on it. Tool-calling rows add
            ``"tools"`` and messages' ``tool_calls`` / ``role: "tool"`` results: an assistant
            turn's calls are trained with it, results and schemas never.
        tokenizer: a tokenizer with the chat template installed (:func:`apply_template`).
        train_on: ``"assistant"`` trains exactly the content plus end-of-turn token of each
            assistant message with weight 1 (everything else is context); ``"all"`` trains every
            token, including system and user text and weight-0 turns. Text rows train every
            token either way.
        max_length: longest row allowed, in tokens; longer rows are an error (never silently
            truncated, which would drop the answers at the end).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` with labels ``-100`` where there is no loss
        (not shifted: the model shifts them).

    Raises:
        DataError: the row is longer than ``max_length``, has no trained token, or the template
            rejects it (e.g. roles that do not alternate); the message starts ``"row N, field:"``.
        TemplateError: the installed template lacks (or misplaces) generation markers, or has no
            tool-calling format for a row with tools.

    Example:
        >>> encode({"messages": [{"role": "user", "content": "Hi"},
        ...                      {"role": "assistant", "content": "Hello"}], "row": 1},
        ...        tokenizer)  # doctest: +SKIP
        {'input_ids': [...], 'labels': [-100, ..., 19556, 2]}
    """
    check_options(train_on)
    try:
        return _encode_row(example, tokenizer, train_on, max_length)
    except _Rejected as e:
        problem = RowProblem(example.get("file"), example.get("row"), e.field, e.message)
        raise problem.error() from e.__cause__


def encode_all(
    examples: list[dict],
    tokenizer,
    *,
    train_on: Literal["assistant", "all"] = "assistant",
    max_length: int | None = None,
    on_bad_rows: Literal["raise", "skip"] = "raise",
    source: str = "data",
) -> tuple[list[dict], list[str]]:
    """Encode every row, collecting the bad ones instead of stopping at the first.

    Args:
        examples: rows as accepted by :func:`encode`; a row without ``"row"`` is numbered by
            its 1-based position.
        tokenizer: a tokenizer with the chat template installed.
        train_on: see :func:`encode`.
        max_length: see :func:`encode`.
        on_bad_rows: ``"raise"`` raises one error listing every bad row; ``"skip"`` drops them
            and logs a warning.
        source: where the rows came from (a file name), for messages; a row's own ``"file"``
            names it instead.

    Returns:
        ``(encoded rows, problems)``: the problems (one line per skipped row) are empty unless
        rows were skipped.

    Raises:
        DataError: with ``on_bad_rows="raise"``, when any row is bad: the same report
            ``tunekit.data.read_examples`` gives (:func:`tunekit.data.bad_rows_error`).
        TemplateError: the template lacks generation markers (not a row problem).
    """
    check_options(train_on, on_bad_rows)
    results, problems = encode_rows(examples, tokenizer, train_on=train_on, max_length=max_length, source=source)
    encoded = [r for r in results if r is not None]
    if problems and on_bad_rows == "raise":
        raise bad_rows_error(problems, source=source, total=len(examples), kept=len(encoded))
    if problems:
        logger.warning(
            "%s", skipped_message(problems, source=source, total=len(examples), kept=len(encoded))
        )
    return encoded, [str(p) for p in problems]


def encode_rows(
    examples: list[dict],
    tokenizer,
    *,
    train_on: Literal["assistant", "all"] = "assistant",
    max_length: int | None = None,
    source: str = "data",
    unit: str = "row",
) -> tuple[list[dict | None], list[RowProblem]]:
    """Encode every row and return the problems instead of a verdict: for callers that report
    these with the problems reading found, in one report (``tunekit.data.settle``).

    Args:
        examples: rows as accepted by :func:`encode`.
        tokenizer: a tokenizer with the chat template installed.
        train_on: see :func:`encode`.
        max_length: see :func:`encode`.
        source: where the rows came from, for the problems; a row's own ``"file"`` names it instead.
        unit: what the rows' numbers count (``"line"`` for jsonl), as reading reports them.

    Returns:
        ``(encodings, problems)``: one encoding per example, None where the row is bad.

    Raises:
        TemplateError: the template lacks generation markers (not a row problem).
    """
    check_options(train_on)
    encoded: list[dict | None] = []
    problems: list[RowProblem] = []
    for position, example in enumerate(examples, start=1):
        if "row" not in example:
            example = {**example, "row": position}
        try:
            encoded.append(_encode_row(example, tokenizer, train_on, max_length))
        except _Rejected as e:
            encoded.append(None)
            problems.append(RowProblem(example.get("file") or source, example["row"], e.field, e.message, unit))
    return encoded, problems
