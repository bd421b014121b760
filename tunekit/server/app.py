"""The FastAPI application (routers, the API-key check, OpenAI's error shape) and ``serve``,
which binds the socket and runs uvicorn.

A new group of endpoints (Files, Fine-tuning Jobs, vLLM's ``/v1/load_lora_adapter``) is a new
``routes_*.py`` module with an ``APIRouter`` and one ``include_router`` line below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request

from ..errors import ConfigError
from . import routes_chat, routes_lora, routes_models
from .context import DEFAULT_MAX_BODY, ServerContext, context_of
from .errors import APIError, add_handlers, too_large

if TYPE_CHECKING:  # pragma: no cover
    from ..serve import AdapterPool

log = logging.getLogger(__name__)


async def _check_key(request: Request, call_next):
    # A middleware, so a wrong key is refused before the body is read; on every path, /health
    # included, so nothing answers a caller without the key.
    if not context_of(request).authorized(request.headers.get("authorization")):
        return APIError(401, "Incorrect API key provided.", code="invalid_api_key").response()
    return await call_next(request)


# The routes whose bodies are uploads, bounded by ``max_upload`` rather than ``max_body``.
UPLOAD_ROUTES = (("POST", "/v1/files"),)
DEFAULT_MAX_UPLOAD = 512 * 2**20


class _BodyLimit:
    """Refuses bodies over the route's limit with 413: at once when ``Content-Length`` says so,
    else as soon as the chunks read so far pass it, so no more than the limit is ever read.

    A plain ASGI middleware rather than a route check, so it bounds every route, those that
    read their body themselves (chat) included. Uploads (:data:`UPLOAD_ROUTES`) get their own,
    larger limit: their multipart body is spooled to disk by the form parser, never held whole,
    while a chat body is parsed in memory.
    """

    def __init__(self, app, limit: int, upload_limit: int | None = None):
        self.app, self.limit = app, limit
        self.upload_limit = upload_limit or limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = (scope.get("method"), scope.get("path", "").rstrip("/")) in UPLOAD_ROUTES
        limit, flag = (self.upload_limit, "--max-upload") if upload else (self.limit, "--max-body")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit, flag).response()(scope, receive, send)
        received, exceeded, started = 0, False, False

        async def bounded():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _too_large(limit, flag)
            return message

        async def answer(message):
            # Whatever the app makes of a body cut short (the form parser says 400) is replaced
            # by the 413 below.
            nonlocal started
            if not exceeded:
                started = True
                await send(message)

        try:
            await self.app(scope, bounded, answer)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _too_large(limit, flag).response()(scope, receive, send)


def _too_large(limit: int, flag: str) -> APIError:
    """The 413, naming the flag that raises the limit."""
    error = too_large(limit)
    if flag != "--max-body":
        error.message = error.message.replace("--max-body", flag)
    return error


async def _health(request: Request) -> dict:
    return context_of(request).health()


def create_app(pool: AdapterPool, adapters: list[str] | None = None, *, allow_any: bool = False,
               api_key: str | None = None, base_name: str | None = None,
               max_body: int = DEFAULT_MAX_BODY, max_upload: int = DEFAULT_MAX_UPLOAD,
               lora_modules: dict[str, str] | None = None, allow_runtime_lora: bool = False,
               lora_root: str | None = None) -> FastAPI:
    """The OpenAI-compatible API over one adapter pool, as an ASGI app.

    Args:
        pool: the pool holding the base and the adapters.
        adapters: the adapter names (Hub ids or folders) to answer to, listed by ``/v1/models``;
            each is pulled on first use and kept in the pool's LRU.
        allow_any: also pull adapters not listed when a request names them; only Hub ids
            (``owner/name``) are taken, never paths: local folders are served only when listed.
        api_key: when set, every request (``/health`` too) must carry ``Authorization: Bearer <api_key>``.
        base_name: the model id that answers with the base alone; default: the pool's base name.
        max_body: the largest request body in bytes (default 8 MiB); a larger one gets 413
            before it is read, with or without ``api_key``.
        max_upload: the largest ``POST /v1/files`` body in bytes (default 512 MiB), spooled to
            disk as it arrives; a larger one gets 413 the same way.
        lora_modules: adapters under names of their own, ``{name: Hub id or folder}`` (vLLM's
            ``--lora-modules``).
        allow_runtime_lora: serve vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.
        lora_root: the folder whose subfolders those may load by path (default: Hub ids only).

    Returns:
        A FastAPI app; run it with uvicorn, mount it in another app, or see :func:`serve`.

    Raises:
        ConfigError: an adapter has the base's name, or ``max_body`` or ``max_upload`` is not a
            positive integer.

    Example:
        >>> app = create_app(tunekit.AdapterPool("alice/tiny-base"), ["alice/support-lora"])  # doctest: +SKIP
    """
    app = FastAPI(title="tunekit OpenAI-compatible server", docs_url=None, redoc_url=None)
    app.state.context = ServerContext(pool, adapters, allow_any=allow_any, api_key=api_key, base_name=base_name,
                                      max_body=max_body, lora_modules=lora_modules,
                                      allow_runtime_lora=allow_runtime_lora, lora_root=lora_root)
    if isinstance(max_upload, bool) or not isinstance(max_upload, int) or max_upload < 1:
        raise ConfigError(f"max_upload must be a positive number of bytes, got {max_upload!r}")
    app.state.max_upload = max_upload  # the Files API's own limit (attach() reads it)
    add_handlers(app)
    # The last added runs first: the key is checked, then the body is bounded as it is read.
    app.add_middleware(_BodyLimit, limit=max_body, upload_limit=max_upload)
    app.middleware("http")(_check_key)
    app.add_api_route("/health", _health, methods=["GET"])
    app.include_router(routes_models.router)
    app.include_router(routes_chat.router)
    app.include_router(routes_lora.router)
    from . import routes_files, routes_jobs  # the Files and Fine-tuning Jobs API

    app.include_router(routes_files.router)
    app.include_router(routes_jobs.router)
    routes_jobs.attach(app)  # default settings; serve() (or a caller) may attach others before it starts
    return app


def serve(base: str | None = None, adapters: list[str] | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          max_loaded: int | None = None, device: str | None = None, token: str | None = None,
          allow_any: bool = False, api_key: str | list[str] | dict[str, str] | None = None,
          max_body: int = DEFAULT_MAX_BODY, max_upload: int = DEFAULT_MAX_UPLOAD, data: str | None = None,
          jobs_concurrency: int = 1, push_to: str | None = None,
          lora_modules: dict[str, str] | None = None, allow_runtime_lora: bool = False,
          lora_root: str | None = None, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          ready: Callable[[str], None] | None = None, batching: bool = True) -> None:
    """Run the OpenAI-compatible server until interrupted.

    Args:
        base: the shared base (Hub id, folder, or None for the embedded SmolLM2-135M-Instruct).
        adapters: adapter Hub ids or folders to serve; each is pulled on first use.
        host: interface to listen on (127.0.0.1: this machine only).
        port: TCP port (0: any free one; ``ready`` is told which).
        max_loaded: adapters kept in memory at once (least recently used evicted); None: all.
        device: "cpu" or "cuda"; default: cuda when available.
        token: Hub token for private adapters and base.
        allow_any: also serve adapters not listed, pulled by Hub id when a request asks.
        api_key: require ``Authorization: Bearer <api_key>`` on every request; several keys (a
            list, or a mapping of key to owner name) are separate tenants: each sees only its
            own files, fine-tuning jobs and fine-tuned models.
        max_body: the largest request body in bytes (uploads aside); larger ones get 413.
        max_upload: the largest file upload (``POST /v1/files``) in bytes; larger ones get 413.
        data: folder for the Fine-tuning Jobs API's files, jobs and runs (default
            ``$TUNEKIT_HOME/server``); queued and interrupted jobs carry on when it restarts.
        jobs_concurrency: fine-tuning jobs trained at once, each in its own process.
        push_to: a Hub user or organisation: each succeeded job's model is pushed there with its
            model card (endpoint and token from ``HF_ENDPOINT`` / ``HF_TOKEN``); None: never.
        lora_modules, allow_runtime_lora, lora_root: as for :func:`create_app`.
        ssl_certfile, ssl_keyfile: a PEM certificate (chain) and its key: speak HTTPS (uvicorn's TLS).
        ready: called with the base URL once the server accepts connections.

    A ``host`` other than loopback logs a warning (see :func:`exposure_warning`): this server
    speaks plain HTTP.

    Raises:
        ConfigError: the address cannot be bound, or an adapter has the base's name.

    Example:
        >>> serve("alice/tiny-base", ["alice/a", "alice/b"], port=8000, max_loaded=8)  # doctest: +SKIP
    """
    import uvicorn

    from ..serve import AdapterPool

    tls = _check_tls(ssl_certfile, ssl_keyfile)
    warning = exposure_warning(host, api_key=api_key, tls=tls)
    if warning:  # before the base loads, so it is seen at once
        log.warning("%s", warning)
    # batching=False: one request at a time (AdapterPool's batching; the benchmark's baseline).
    pool = AdapterPool(base, max_loaded=max_loaded, device=device, token=token, auto_add=True, batching=batching)
    app = create_app(pool, adapters, allow_any=allow_any, api_key=api_key, max_body=max_body, max_upload=max_upload,
                     lora_modules=lora_modules, allow_runtime_lora=allow_runtime_lora, lora_root=lora_root)
    from .routes_jobs import attach

    attach(app, data=data, concurrency=jobs_concurrency, push_to=push_to)
    # Bind before announcing the URL, so whoever reads it can connect at once (and port 0 works).
    sock = _bind(host, port)
    runner = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
    bound = sock.getsockname()[1]
    url = f"{'https' if tls else 'http'}://{host if ':' not in host else f'[{host}]'}:{bound}/v1"
    log.info("OpenAI-compatible server for %s at %s", ", ".join(app.state.context.model_ids()), url)
    if ready is not None:
        ready(url)
    try:
        runner.run(sockets=[sock])
    finally:
        sock.close()


def exposure_warning(host: str, *, api_key=None, tls: bool = False) -> str | None:
    """What to tell whoever binds ``host``: None for loopback, else a warning that the server is
    reachable from other machines over plain HTTP (and, without ``api_key``, open to all). With
    ``tls`` only a missing key is worth a warning.

    Example:
        >>> exposure_warning("127.0.0.1") is None
        True
    """
    if _is_loopback(host):
        return None
    if tls:
        return None if api_key else (f"listening on {host}, reachable from other machines, over TLS, without "
                                     "--api-key: anyone who reaches it can use it.")
    carried = "prompts, replies and the API key" if api_key else "prompts and replies"
    text = (f"listening on {host}, reachable from other machines, over plain HTTP: {carried} cross the network "
            "unencrypted. Pass --ssl-certfile/--ssl-keyfile, or put a TLS-terminating proxy in front of a "
            "server bound to 127.0.0.1, or keep this address on a network you trust.")
    if not api_key:
        text += " Without --api-key anyone who reaches it can use it."
    return text


def _check_tls(certfile: str | None, keyfile: str | None) -> bool:
    from pathlib import Path

    if (certfile is None) != (keyfile is None):
        raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile (a PEM certificate and its key)")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path!r}: no such file")
    return certfile is not None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _bind(host: str, port: int):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from e
    sock.listen(128)
    return sock
