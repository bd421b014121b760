"""Previewing rows as the model will see them, with the trained tokens marked."""

from __future__ import annotations

from typing import Literal

from ..errors import DataError
from .encoding import IGNORE_INDEX, check_options, encode
from .pairs import encode_preference_rows

_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"


def _marked_text(tokenizer, ids: list[int], labels: list[int], opening: str, closing: str) -> str:
    text = []
    start = 0
    # Decode runs of equally-marked tokens so multi-token characters stay whole.
    for end in range(1, len(ids) + 1):
        is_trained = labels[start] != IGNORE_INDEX
        if end == len(ids) or (labels[end] != IGNORE_INDEX) != is_trained:
            chunk = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            text.append(f"{opening}{chunk}{closing}" if is_trained else chunk)
            start = end
    return "".join(text)


def _preference_preview(example: dict, position: int, row: int, tokenizer, opening: str, closing: str) -> list[str]:
    """A DPO pair or a KTO completion as its trainer sees it: the chat-time prompt (context),
    then each reply, every token of which is trained (:mod:`tunekit.templates.pairs`)."""
    (enc,), problems = encode_preference_rows([{**example, "row": row}], tokenizer)
    if enc is None:
        return [f"── example {position} (row {row}): cannot be encoded ──\n{problems[0]}"]
    prompt = tokenizer.decode(enc["prompt_ids"], skip_special_tokens=False)
    if "chosen_ids" in enc:
        replies = [("chosen", enc["chosen_ids"]), ("rejected", enc["rejected_ids"])]
        kind = "preference pair (dpo)"
    else:
        label = "good" if enc["label"] else "bad"
        replies = [(f"completion, label {str(enc['label']).lower()} ({label})", enc["completion_ids"])]
        kind = "labelled completion (kto)"
    counts = ", ".join(f"{name.split(',')[0]} {len(ids)}" for name, ids in replies)
    parts = [f"── example {position} (row {row}): {kind}, prompt {len(enc['prompt_ids'])} tokens, "
             f"trained: {counts} ──", "prompt:", prompt]
    for name, ids in replies:
        parts += [f"{name}:", _marked_text(tokenizer, ids, list(ids), opening, closing)]
    return parts


def preview(
    examples: list[dict],
    tokenizer,
    *,
    n: int = 3,
    train_on: Literal["assistant", "all"] = "assistant",
    color: bool = False,
) -> str:
    """Show how the first ``n`` rows are rendered and which tokens are trained.

    Args:
        examples: rows as accepted by :func:`~tunekit.templates.encode`, or preference rows
            (DPO pairs, KTO completions; see :mod:`tunekit.templates.pairs`): their prompt, then
            each reply with its trained tokens marked.
        tokenizer: a tokenizer with the chat template installed.
        n: how many rows to show.
        train_on: see :func:`~tunekit.templates.encode`.
        color: mark trained text in green (ANSI) instead of wrapping it in ``⟦…⟧``.

    Returns:
        A legend line, then per row a header with its token counts (total / trained) and its
        text with the trained spans marked. A bad row shows its problem instead.
    """
    check_options(train_on)
    opening, closing = (_GREEN, _RESET) if color else ("⟦", "⟧")
    legend = (
        "legend: green text is trained (carries loss); the rest is context"
        if color
        else "legend: ⟦…⟧ marks trained tokens (carry loss); the rest is context"
    )
    parts = [legend]
    for position, example in enumerate(examples[:n], start=1):
        row = example.get("row", position)
        if "chosen" in example or "completion" in example:
            parts += _preference_preview(example, position, row, tokenizer, opening, closing)
            continue
        try:
            enc = encode({**example, "row": row}, tokenizer, train_on=train_on)
        except DataError as e:
            parts.append(f"── example {position} (row {row}): cannot be encoded ──\n{e}")
            continue
        ids, labels = enc["input_ids"], enc["labels"]
        trained = sum(label != IGNORE_INDEX for label in labels)
        parts.append(
            f"── example {position} (row {row}): {len(ids)} tokens, {trained} trained ──"
        )
        parts.append(_marked_text(tokenizer, ids, labels, opening, closing))
    return "\n".join(parts)
