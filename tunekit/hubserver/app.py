"""The FastAPI application: routers in matching order and the error format the client expects."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import routes_commit, routes_files, routes_lfs, routes_repos
from .context import Hub
from .errors import ApiError
from .settings import HubSettings

logger = logging.getLogger(__name__)


def _header_safe(message: str) -> str:
    # Header values must be one latin-1 line.
    return " ".join(message.split()).encode("latin-1", "replace").decode("latin-1")[:500]


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
    app.add_exception_handler(ApiError, _api_error)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok"}

    # Order matters: fixed API paths before the catch-all file URLs of models.
    app.include_router(routes_repos.router)
    app.include_router(routes_commit.router)
    app.include_router(routes_lfs.router)
    app.include_router(routes_files.router)
    return app
