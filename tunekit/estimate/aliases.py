"""The estimate's deprecated keyword names, mapped through tunekit's one alias helper
(:func:`tunekit.options.renamed`) so that ``estimate`` speaks ``finetune``'s vocabulary."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Old keyword -> the Options name for the same concept.
ALIASES = {"seq_len": "max_length", "lora_dropout": "dropout"}


def accepts_old_names(where: str) -> Callable[[F], F]:
    """Decorate a function so the :data:`ALIASES` old names still work, with a FutureWarning.

    The wrapper keeps the function's signature (``inspect.signature`` follows ``__wrapped__``),
    so the CLI's flags and docs see only the new names.

    Args:
        where: the function's name for the warning, e.g. ``"estimate()"``.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if ALIASES.keys() & kwargs.keys():
                # Imported here: options is a layer above the estimate (it validates training runs).
                from ..options import renamed

                kwargs = renamed(kwargs, ALIASES, where=where)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
