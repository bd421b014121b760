"""Who is calling: each API key is an owner, and sees only its own files, jobs and models.

The owner of the request being answered is kept in a context variable, set by a small ASGI
middleware, so code that has no request at hand (the server's model list) can ask for it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar

# The one owner of a server started without keys: everything it holds is everyone's.
SHARED = "tunekit"

_CALLER: ContextVar[str] = ContextVar("tunekit_jobs_caller", default=SHARED)


def owner_name(key: str) -> str:
    """The owner a key stands for when no name was given: ``key-`` and 8 hex digits of its hash
    (never the key itself, which would then appear in model ids)."""
    return f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class Owners:
    """The keys a server accepts and the owner each stands for.

    Args:
        api_key: None (no keys: one shared owner), one key, several keys, or a mapping of key
            to owner name (a keys file's ``OWNER KEY`` lines).
    """

    def __init__(self, api_key: str | Iterable[str] | Mapping[str, str] | None):
        if not api_key:
            self.keys: dict[str, str] = {}
        elif isinstance(api_key, str):
            self.keys = {api_key: owner_name(api_key)}
        elif isinstance(api_key, Mapping):
            self.keys = {k: v or owner_name(k) for k, v in api_key.items()}
        else:
            self.keys = {k: owner_name(k) for k in api_key}

    def owner_of(self, authorization: str | None) -> str | None:
        """The owner an ``Authorization`` header stands for; None for no key or a wrong one."""
        if not self.keys:
            return SHARED
        given = (authorization or "").encode()
        found = None
        for key, owner in self.keys.items():  # every key compared, in constant time each
            if secrets.compare_digest(given, f"Bearer {key}".encode()):
                found = owner
        return found


def caller() -> str:
    """The owner of the request being answered (:data:`SHARED` outside a request)."""
    return _CALLER.get()


class CallerMiddleware:
    """Sets :func:`caller` for each HTTP request from its ``Authorization`` header.

    Args:
        app: the ASGI app it wraps.
        owners: a function returning the :class:`Owners` in force (the app's may be replaced
            before it starts).
    """

    def __init__(self, app, owners: Callable[[], Owners]):
        self.app, self.owners = app, owners

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization")
        owner = self.owners().owner_of(header.decode("latin-1") if header is not None else None)
        token = _CALLER.set(owner or "")  # "" owns nothing; the key check refuses the request anyway
        try:
            return await self.app(scope, receive, send)
        finally:
            _CALLER.reset(token)


def read_keys_file(path: str) -> dict[str, str]:
    """The keys of a keys file: one per line, ``KEY`` or ``OWNER KEY``; blank lines and lines
    starting with ``#`` are skipped.

    Returns:
        key → owner name (:func:`owner_name` where a line names none).

    Raises:
        ConfigError: the file cannot be read, a line has more than two words, an owner name is
            not letters, digits, ``-`` or ``_``, or no key is in it.
    """
    import re

    from ..errors import ConfigError

    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the keys file {path}: {e.strerror or e}") from e
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2 or (len(words) == 2 and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", words[0])):
            raise ConfigError(f"{path}, line {number}: expected `KEY` or `OWNER KEY` (owner: letters, digits, "
                              "- or _), one per line")
        owner, key = (words[0], words[1]) if len(words) == 2 else (owner_name(words[0]), words[0])
        keys[key] = owner
    if not keys:
        raise ConfigError(f"the keys file {path} holds no key; put one per line (`KEY` or `OWNER KEY`)")
    return keys
