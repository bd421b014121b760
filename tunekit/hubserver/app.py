"""The FastAPI application: routers in matching order and the error format the client expects."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import routes_commit, routes_files, routes_lfs, routes_repos
from .context import Hub
from .errors import ApiError
from .settings import HubSettings
from .validate import ENCODED_SLASH

logger = logging.getLogger(__name__)


# Endpoints of huggingface.co this hub does not implement, by what the client calls them. The
# first pattern matching the path names the feature in the 501 answer.
UNIMPLEMENTED = (
    (r"/xet-", "Xet storage (set HF_HUB_DISABLE_XET=1 so the client uploads through LFS)"),
    (r"/discussions|/pulls?\b", "pull requests and discussions"),
    (r"/(runtime|secrets|variables|hardware|restart|pause|sleeptime)\b", "Space runtime settings"),
    (r"access-request|/user-access-request", "gated repos and access requests"),
    (r"^/api/collections", "collections"),
    (r"/like\b|/likes\b", "likes"),
    (r"^/api/(jobs|inference|endpoints|scheduled-jobs)", "jobs and inference endpoints"),
    (r"^/api/buckets|/buckets/", "storage buckets"),
)


_SLASH = re.compile(r"%2[fF]")


class KeepEncodedSlashes:
    """ASGI middleware: an encoded slash stays part of its URL segment.

    The client quotes revisions with ``safe=""``, so branch ``feature/x`` arrives as
    ``tree/feature%2Fx/path``; decoded, it would read as branch ``feature`` and path ``x/path``.
    Each ``%2F`` becomes :data:`.validate.ENCODED_SLASH` before routing, and ``url_param`` turns
    it back into ``/`` once the segment has been matched to its parameter.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2" in raw and _SLASH.search(raw.decode("ascii", errors="replace")):
            # As uvicorn decodes the path (ASCII, then percent-decoding as UTF-8), piece by piece.
            text = raw.decode("ascii", errors="replace")
            pieces = [unquote(piece) for piece in _SLASH.split(text)]
            scope = dict(scope, path=ENCODED_SLASH.join(pieces))
        await self.app(scope, receive, send)


def _header_safe(message: str) -> str:
    # Header values must be one latin-1 line without control characters (a NUL drops the
    # connection).
    text = "".join(c if c.isprintable() else " " for c in message)
    return " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")[:500]


def unimplemented_feature(method: str, path: str) -> str:
    """The feature a request for an unknown endpoint asks for, in words the user knows."""
    for pattern, feature in UNIMPLEMENTED:
        if re.search(pattern, path):
            return feature
    return f"the endpoint {method} {path}"


async def _not_implemented(request: Request) -> JSONResponse:
    # Not 404: the client reads a bare 404 as "repository not found", which sends users
    # looking for a typo instead of a missing feature. Nothing of the body is read.
    feature = unimplemented_feature(request.method, request.url.path)
    message = f"Not implemented by tunekit hub: {feature}"
    return JSONResponse(
        {"error": message}, status_code=501, headers={"X-Error-Message": _header_safe(message)}
    )


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {"X-Error-Message": _header_safe(exc.message)}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    if exc.status >= 500:
        logger.error("%s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def create_app(
    data_dir: str | Path | None = None, *, settings: HubSettings | None = None
) -> FastAPI:
    """Build the hub server application for a data dir.

    Args:
        data_dir: folder for the hub's metadata and files (created if missing).
        settings: full settings instead of ``data_dir`` (limits, public URL).

    Returns:
        An ASGI app; run it with uvicorn, or see :func:`tunekit.hubserver.serve`.

    Example:
        >>> app = create_app("/srv/hub")  # doctest: +SKIP
    """
    if settings is None:
        if data_dir is None:
            raise ValueError("create_app needs data_dir or settings")
        settings = HubSettings(Path(data_dir))
    app = FastAPI(title="tunekit hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = Hub(settings)
    app.add_middleware(KeepEncodedSlashes)
    app.add_exception_handler(ApiError, _api_error)

    @app.get("/api/health")
    def health() -> dict:
        # "server" lets tunekit's client recognise this hub (and upload through LFS: no Xet).
        return {"status": "ok", "server": "tunekit-hub", "xet": False}

    # Order matters: fixed API paths before the catch-all file URLs of models.
    app.include_router(routes_repos.router)
    app.include_router(routes_commit.router)
    app.include_router(routes_lfs.router)
    app.include_router(routes_files.router)
    # Last, so it answers only what no route above matched.
    app.add_api_route(
        "/{path:path}",
        _not_implemented,
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    return app
