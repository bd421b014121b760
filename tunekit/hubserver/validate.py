"""Checks on everything a client names: account and repo names, paths in a repo, revisions, oids.

File contents are stored by sha256, never under the client's path, so a bad path cannot reach the
disk; the checks still refuse such paths (400) so that no repo can hold a name that would be unsafe
once a client writes it out, e.g. ``../../.bashrc`` in a snapshot download.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ..hubid import is_valid_name
from .errors import ApiError, bad_request

#: URL segment (``/api/{segment}/…``) → repo type, and repo type → URL prefix for files and LFS.
TYPE_BY_SEGMENT = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")

# fullmatch, never "$": "$" also matches before a trailing newline, so "<oid>\n" would pass.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
# git's default abbreviation is 7 digits; fewer would match too many commits to be useful.
_SHORT_COMMIT_ID = re.compile(r"[0-9a-fA-F]{7,40}")
#: What an encoded slash (``%2F``) inside one URL segment becomes before routing (see
#: :func:`.app.keep_encoded_slashes`); a private-use character no valid name contains.
ENCODED_SLASH = "\ue000"
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
# A drive ("C:", "C:x") in any segment: huggingface_hub refuses to download such a file (and
# aborts the whole snapshot), since on Windows it would leave the target folder.
_DRIVE = re.compile(r"[A-Za-z]:")
MAX_PATH_CHARS = 1024
# Longest file or folder name most file systems store; a longer one can be committed but never
# downloaded.
MAX_SEGMENT_BYTES = 255
# Account names that would clash with the server's own URL prefixes (``/api/…``, ``/datasets/…``).
RESERVED_NAMESPACES = frozenset(
    {"api", "datasets", "spaces", "models", "organizations", "settings"}
)


def repo_type(segment: str) -> str:
    """``"models"`` → ``"model"``; anything else is a 404 (an unknown route)."""
    try:
        return TYPE_BY_SEGMENT[segment]
    except KeyError:
        raise ApiError(404, f"Unknown repo type {segment!r}") from None


def check_name(name: object, what: str = "name") -> str:
    """Validate a user, org or repo name (Hub rules: letters, digits, ``-._``, no ``--``/``..``).

    Raises:
        ApiError: 400 when the name is not allowed.
    """
    # A trailing newline slips through a "$"-anchored pattern; refuse it by name.
    if isinstance(name, str) and "\n" in name:
        raise bad_request(f"Invalid {what} {name!r}: it contains a newline")
    if not is_valid_name(name):
        raise bad_request(
            f"Invalid {what} {name!r}: use letters, digits, '-', '_' and '.', at most 96"
            " characters, starting and ending with a letter or digit"
        )
    return name


def check_account_name(name: object, what: str) -> str:
    """Validate a new user or org name: a valid name that is not a reserved URL prefix."""
    check_name(name, what)
    if str(name).lower() in RESERVED_NAMESPACES:
        raise bad_request(f"{what} {name!r} is reserved: choose another name")
    return str(name)


def _path_problem(path: str) -> str | None:
    if not path:
        return "empty path"
    if len(path) > MAX_PATH_CHARS:
        return "path too long"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control character (or NUL) in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "empty, '.' or '..' segment in path"
    return _segment_problem(parts)


def _segment_problem(parts: list[str]) -> str | None:
    lowered = [p.lower() for p in parts]
    # Case-insensitive: on macOS and Windows ".GIT" is ".git", and a download into a checkout
    # would overwrite its .git/config.
    if ".git" in lowered:
        return "'.git' segment in path (in any letter case)"
    # Where huggingface_hub keeps its own bookkeeping inside a local_dir download.
    if lowered[:2] == [".cache", "huggingface"]:
        return "'.cache/huggingface' is the client's bookkeeping folder"
    if any(_DRIVE.match(p) for p in parts):
        return "drive letter (such as 'C:') in a path segment"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for p in parts):
        return f"a file or folder name longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def check_repo_path(path: object) -> str:
    """Validate a file or folder path inside a repo.

    The path is checked as given and once more percent-decoded, so that a double-encoded
    ``%252e%252e`` (which arrives here as the literal ``%2e%2e``) cannot become ``..`` in a client
    that decodes it again.

    Raises:
        ApiError: 400 naming the problem.
    """
    if not isinstance(path, str):
        raise bad_request("Invalid path: expected a string")
    path = url_param(path)
    problem = _path_problem(path)
    if problem is None and "%" in path:
        problem = _path_problem(unquote(path))
    if problem:
        raise bad_request(f"Invalid path {path!r}: {problem}")
    return path


def check_oid(oid: object) -> str:
    """Validate an LFS oid (lowercase hex sha256); it becomes part of a file name on disk."""
    if not isinstance(oid, str) or not _SHA256.fullmatch(oid):
        raise bad_request(f"Invalid LFS oid {oid!r}: expected 64 lowercase hex characters")
    return oid


def is_sha256(value: str) -> bool:
    """Whether ``value`` looks like a lowercase hex sha256."""
    return bool(_SHA256.fullmatch(value))


def is_commit_id(rev: str) -> bool:
    """Whether ``rev`` is a full 40-hex commit id rather than a branch name."""
    return bool(_COMMIT_ID.fullmatch(rev))


def is_short_commit_id(rev: str) -> bool:
    """Whether ``rev`` could be a commit id shortened to 7 or more hex digits."""
    return bool(_SHORT_COMMIT_ID.fullmatch(rev))


def url_param(value: str) -> str:
    """A path parameter as the client meant it: an encoded slash (``%2F``) is a slash again."""
    return value.replace(ENCODED_SLASH, "/")


def check_branch(name: object, what: str = "branch") -> str:
    """Validate a branch (or tag) name (letters, digits, ``._/-``; no ``..``)."""
    if isinstance(name, str):
        name = url_param(name)
    if not isinstance(name, str) or not _BRANCH.fullmatch(name) or ".." in name or "//" in name:
        raise bad_request(
            f"Invalid {what} name {name!r}: use letters, digits and '._/-', starting with a letter"
            " or digit, without '..' or '//'"
        )
    return name


def check_revision(revision: object) -> str:
    """Validate a revision as a request names it (a branch, a tag or a commit id) and return it
    as the client meant it (encoded slashes restored: see :func:`url_param`).

    Raises:
        ApiError: 400 for control characters (a NUL would end up in an error header and drop the
            connection) or an over-long revision.
    """
    if not isinstance(revision, str) or not revision:
        raise bad_request("Invalid revision: expected a branch name or a commit id")
    revision = url_param(revision)
    if any(ord(c) < 32 or ord(c) == 127 for c in revision):
        raise bad_request(f"Invalid revision {revision!r}: control character (or NUL)")
    if len(revision) > 256:
        raise bad_request("Invalid revision: longer than 256 characters")
    return revision
