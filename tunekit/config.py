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


def debug() -> bool:
    """``TUNEKIT_DEBUG=1`` makes the CLI print full tracebacks."""
    return os.environ.get("TUNEKIT_DEBUG", "") not in ("", "0", "false", "False")


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
    return os.environ.get("TUNEKIT_FASTPATH", "1").strip().lower() not in ("0", "false", "no", "off")
