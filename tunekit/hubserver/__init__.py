"""A small, self-hostable Hugging Face Hub-compatible server (``tunekit hub serve``).

It speaks the subset of the Hub API that ``huggingface_hub`` uses to create repos, upload (inline
and LFS), commit, list and download, so that tunekit — and a team's private adapters — can live on
a machine with no access to huggingface.co. Data lives in one folder: ``hub.sqlite`` for metadata,
``blobs/`` for file contents by sha256.

Example:
    >>> token = add_user("/srv/hub", "alice")  # doctest: +SKIP
    >>> serve("/srv/hub", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import HubSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["HubSettings", "add_org", "add_user", "create_app", "exposure_warning", "serve"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, public_url: str | None) -> str | None:
    """What is unsafe about serving on ``host`` with this public URL, or ``None`` when nothing is.

    Binding a non-loopback address exposes the hub to the network: without TLS its tokens and
    files cross the network in clear, and without ``--public-url`` its upload links name the
    address each connection arrived on, which is wrong behind a proxy.
    """
    if _is_loopback(host):
        return None
    if not public_url:
        return (
            f"serving on {host}, reachable from other machines, without --public-url: tokens and"
            " files travel unencrypted, and links name whatever address a client connected to."
            " Put the hub behind a TLS proxy and pass --public-url https://<that proxy>"
        )
    if not public_url.lower().startswith("https://"):
        return (
            f"serving on {host} with a plain-http --public-url ({public_url}): tokens and files"
            " travel unencrypted. Put the hub behind a TLS proxy and use its https:// URL"
        )
    return None


def create_app(
    data_dir: str | Path | None = None, *, settings: HubSettings | None = None
) -> FastAPI:
    """Build the ASGI app serving the hub stored in ``data_dir``. See :func:`.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(data_dir, settings=settings)


def add_user(data_dir: str | Path, name: str) -> str:
    """Create user ``name`` (if new) in the hub at ``data_dir`` and return a new token for it.

    Works while the server runs: the metadata store is shared safely between processes.

    Args:
        data_dir: the hub's data folder.
        name: user name (letters, digits, ``-._``).

    Returns:
        A token (``hf_…``) to pass as ``HF_TOKEN`` or ``HfApi(token=…)``; only its hash is stored.

    Raises:
        tunekit.errors.HubError: the name is invalid or belongs to an organization.
    """
    from ..errors import HubError
    from .errors import ApiError
    from .storage import HubStore

    try:
        return HubStore(Path(data_dir)).add_user(name)
    except ApiError as e:
        raise HubError(e.message) from e


def add_org(data_dir: str | Path, name: str, members: list[str] | None = None) -> None:
    """Create organization ``name`` (if new) and add existing users to it as members.

    Members may create and write repos under the org's namespace and read its private repos.

    Raises:
        tunekit.errors.HubError: a name is invalid, a member does not exist, or ``name`` is a user.
    """
    from ..errors import HubError
    from .errors import ApiError
    from .storage import HubStore

    try:
        HubStore(Path(data_dir)).add_org(name, list(members or []))
    except ApiError as e:
        raise HubError(e.message) from e


def serve(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: HubSettings | None = None,
    log_level: str = "warning",
) -> None:
    """Run the hub server in the foreground until interrupted.

    Args:
        data_dir: the hub's data folder (created if missing).
        host: interface to listen on; the default only accepts local connections.
        port: TCP port.
        settings: limits and public URL; ``data_dir`` is used when it is ``None``.
        log_level: uvicorn's log level.
    """
    import uvicorn

    settings = settings or HubSettings(Path(data_dir))
    warning = exposure_warning(host, settings.public_url)
    if warning:
        logger.warning(warning)
    uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=log_level)
