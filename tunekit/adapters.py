"""Opening a PEFT adapter over its base: the one place that checks an adapter fits, grows the
embeddings for tokens the run added, loads it with PEFT, and words the error when it does not fit.

``TuneResult`` (chat, evaluate), the merge and the adapter pool all go through here, so an adapter
that fits one fits all three, and a misfit reads the same everywhere.
"""

from __future__ import annotations

import os
from typing import Any

from . import models
from .errors import ModelError
from .placement import Placement

_FIX = ("It was trained on another model: use it over the base it was trained on "
        "(tunekit.load(..., base=...) picks the base; an AdapterPool needs one over that base).")


def adapter_tokenizer(folder: str | os.PathLike, base: models.Base):
    """The tokenizer to use with an adapter: its own (it carries the chat template the run was
    trained with), else the base's: adapters made with PEFT alone often ship none."""
    return models.load_tokenizer(folder if models.has_tokenizer(folder) else base.path)


def misfit(adapter: str | os.PathLike, base: str, problems: list[str] | str) -> ModelError:
    """The error for an adapter that does not fit a base: which adapter, which base, what
    differs, and the fix.

    Args:
        adapter: the adapter as the user named it (repo id or folder).
        base: the base's name.
        problems: what does not fit (shape lines, or PEFT's own message).
    """
    detail = "; ".join(problems) if isinstance(problems, list) else str(problems)
    return ModelError(f"the adapter {os.fspath(adapter)!r} does not fit base {base!r}: {detail}. {_FIX}")


def check_fits(shapes: dict[str, tuple[int, int]], folder: str | os.PathLike, *, adapter: str | os.PathLike,
               base: str) -> None:
    """Refuse an adapter whose LoRA weights do not match the base's linear layers.

    Args:
        shapes: the base's ``models.linear_shapes``, taken before PEFT wraps it.
        folder: the adapter's folder.
        adapter: its name for the message (repo id or folder).
        base: the base's name for the message.

    Raises:
        ModelError: a module is missing from the base or has other features.
    """
    problems = models.adapter_mismatches(shapes, folder)
    if problems:
        raise misfit(adapter, base, problems)


def fit_embeddings(model, tokenizer) -> None:
    """Grow the model's embeddings to the tokenizer when the run added tokens (PEFT saved the
    grown rows with the adapter, and loading them needs the room)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def attach(model, tokenizer, folder: str | os.PathLike, *, adapter: str | os.PathLike, base: str):
    """Put the adapter in ``folder`` over an already loaded base model.

    Args:
        model: the bare base (no PEFT wrapper yet).
        tokenizer: the tokenizer that goes with the adapter (see :func:`adapter_tokenizer`).
        folder: the adapter's folder.
        adapter: its name for messages (repo id or folder).
        base: the base's name for messages.

    Returns:
        The ``PeftModel``, in eval mode.

    Raises:
        ModelError: the adapter does not fit the base.
    """
    from peft import PeftModel

    fit_embeddings(model, tokenizer)
    check_fits(models.linear_shapes(model), folder, adapter=adapter, base=base)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as e:
        raise misfit(adapter, base, f"shapes or module names differ ({e})") from e
    return peft_model.eval()


def open_adapter(folder: str | os.PathLike, base: models.Base, *, where: Placement, quantize_4bit: bool = False,
                 trust_remote_code: bool = False, adapter: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """Load a base and the adapter in ``folder`` over it.

    Args:
        folder: the adapter's folder.
        base: the resolved base (``models.resolve_base``).
        where: device and dtype of the base.
        quantize_4bit: load the base in 4-bit NF4 (QLoRA adapters).
        trust_remote_code: run model code shipped with the base.
        adapter: the adapter's name for messages; default: ``folder``.

    Returns:
        ``(peft_model, tokenizer)``, the model in eval mode.

    Raises:
        ModelError: the base cannot be loaded, or the adapter does not fit it.
    """
    tokenizer = adapter_tokenizer(folder, base)
    model = models.load_model(base.path, where=where, quantize_4bit=quantize_4bit,
                              trust_remote_code=trust_remote_code)
    return attach(model, tokenizer, folder, adapter=adapter or folder, base=base.name), tokenizer
