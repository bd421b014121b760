"""The one answer to "is this a Hub repo id or a local path?".

A repo id is ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``; no leading
punctuation, no ``..``), the rule huggingface_hub's ``validate_repo_id`` applies. A string that
starts like a path (``.``, ``/``, ``~``) or has more than one ``/`` is a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_PART = r"[A-Za-z0-9][\w.-]{0,95}"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
_NAME = re.compile(rf"^{_PART}$")


def looks_like_path(text: str | os.PathLike) -> bool:
    """True for strings only a file-system path can be: ``./x``, ``/x``, ``~/x``, ``a/b/c``."""
    text = os.fspath(text)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def is_hub_id(text: str | os.PathLike | None, *, owner_required: bool = True,
              existing_path_wins: bool = False) -> bool:
    """Whether ``text`` has the shape of a Hub repo id.

    Args:
        text: the name to check.
        owner_required: only ``owner/name`` counts (models, Spaces); False also accepts a bare
            ``name`` (canonical data sets such as ``squad``).
        existing_path_wins: a name that exists on disk is a path, not a repo id.
    """
    if not text or not isinstance(text, (str, os.PathLike)):
        return False
    text = os.fspath(text)
    if looks_like_path(text) or ".." in text or text.endswith((".", "-")):
        return False
    if not (_REPO_ID.match(text) or (not owner_required and _NAME.match(text))):
        return False
    return not (existing_path_wins and Path(text).exists())
