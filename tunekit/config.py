"""tunekit's own settings, read from ``TUNEKIT_*`` environment variables in this one place.

``HF_TOKEN``, ``HF_HOME`` and ``HF_ENDPOINT`` are left to huggingface_hub.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of tunekit's cache (converted embedded model, downloaded adapters): ``TUNEKIT_HOME``."""
    root = os.environ.get("TUNEKIT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tunekit"
    )
    return Path(root)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case): the one spelling of a boolean for
    flags, config files and environment variables.

    Raises:
        ValueError: any other text.
    """
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false (yes/no, on/off, 1/0), got {text!r}")


def _env_flag(name: str, default: bool) -> bool:
    # Unset or empty keeps the default; a set variable is on unless it spells "off", so a typo
    # (TUNEKIT_DEBUG=2) never silently hides what was asked for.
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in FALSE_WORDS


def debug() -> bool:
    """``TUNEKIT_DEBUG=1`` makes the CLI print full tracebacks."""
    return _env_flag("TUNEKIT_DEBUG", False)


def shipped_dir(name: str) -> Path:
    """Folder of shipped data (``templates`` or ``spaces``).

    They live at the repo's top level (product layout) and are copied into the package as
    ``tunekit/_templates`` / ``tunekit/_spaces`` when a wheel is built; an editable install or a
    source checkout reads them in place.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / f"_{name}", here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tunekit's shipped folder {name!r} is missing; reinstall tunekit")


def fastpath() -> bool:
    """``TUNEKIT_FASTPATH=0`` turns tunekit's fast paths off (the fused LoRA forward, attention
    within rows, the trained-positions loss, kept gradients): training then runs PEFT's and
    transformers' reference code. On by default."""
    return _env_flag("TUNEKIT_FASTPATH", True)
