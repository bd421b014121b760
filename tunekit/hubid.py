"""The one answer to "is this a Hub repo id or a local path?".

A repo id is ``name`` or ``owner/name``; each part is 1-96 letters, digits, ``-``, ``_`` or ``.``,
starting and ending with a letter or digit, without ``--`` or ``..`` and not ending in ``.git``:
the rule huggingface_hub's ``validate_repo_id`` applies, and the one ``tunekit hub serve``
enforces on the names it accepts. A string that starts like a path (``.``, ``/``, ``~``) or has
more than one ``/`` is a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def is_valid_name(part: object) -> bool:
    """Whether ``part`` is a valid owner or repo name (one side of ``owner/name``)."""
    return (isinstance(part, str) and bool(_PART.fullmatch(part)) and "--" not in part and ".." not in part
            and not part.endswith(".git"))


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
    parts = text.split("/")
    if looks_like_path(text) or len(parts) > 2 or (len(parts) == 1 and owner_required):
        return False
    if not all(is_valid_name(p) for p in parts):
        return False
    return not (existing_path_wins and Path(text).exists())
