"""An OpenAI-compatible HTTP server over an :class:`~tunekit.serve.AdapterPool` (``tunekit serve``).

One base model in memory, many adapters beside it; the request's ``model`` picks the adapter
(the base's own name answers with the base alone). It speaks the part of the OpenAI API that chat
clients use: ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST /v1/chat/completions``, whole
or streamed as server-sent events, with tool calls, token usage and OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``), so the official ``openai`` client and tools
built on it work unchanged (``base_url="http://host:port/v1"``); the Files and Fine-tuning Jobs
APIs; and vLLM's ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``.

Concurrent chat requests, for different adapters and the base, are batched into shared forwards
by the pool's scheduler (:mod:`tunekit.batching`, through ``AdapterPool.submit``), joining and
leaving between decoding steps; a pool made with ``batching=False``, or a model the scheduler
refuses (sliding-window attention), answers one request at a time under the pool's lock. An
adapter not yet in memory is downloaded before its request joins, so pulling one never stalls
the others.

Layout: ``app`` (the app and ``serve``), ``context`` (the state), ``schemas`` and
``schemas_jobs`` (pydantic request and response models), ``errors``, ``routes_models``,
``routes_chat``, ``generation`` (the model side: batched or one at a time), ``streaming``
(server-sent events), ``routes_files`` and ``routes_jobs`` (Files and Fine-tuning Jobs),
``routes_lora`` and ``vllm`` (vLLM-compatible adapter management).

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
