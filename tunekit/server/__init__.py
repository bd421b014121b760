"""An OpenAI-compatible HTTP server over an :class:`~tunekit.serve.AdapterPool` (``tunekit serve``).

One base model in memory, many adapters beside it; the request's ``model`` picks the adapter
(the base's own name answers with the base alone). It speaks the part of the OpenAI API that chat
clients use: ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/chat/completions``, whole
or streamed as server-sent events, with token usage and OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``), so the official ``openai`` client and tools
built on it work unchanged (``base_url="http://host:port/v1"``).

Requests share the model one generation at a time (the pool's lock); the web server stays
responsive because generation runs in worker threads, and an adapter not yet in memory is
downloaded before its request takes the model, so pulling one never stalls the others.

Layout: ``app`` (the app and ``serve``), ``context`` (the state), ``schemas`` (pydantic request
and response models), ``errors``, ``routes_models``, ``routes_chat``, ``generation`` (the model
side) and ``streaming`` (server-sent events).

Example:
    >>> from tunekit.server import serve
    >>> serve("alice/tiny-base", ["alice/a", "alice/b"], port=8000, max_loaded=8)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app, serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    # Lazy, so importing tunekit.server (e.g. for the CLI's --help) does not import FastAPI.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
