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

__all__ = [
    "HubSettings",
    "add_org",
    "add_user",
    "client_hint",
    "create_app",
    "exposure_warning",
    "list_tokens",
    "remove_member",
    "remove_user",
    "revoke_token",
    "rotate_token",
    "serve",
]

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


def _store_call(data_dir: str | Path, method: str, *args, **kwargs):
    """Call one :class:`.storage.HubStore` method, turning its ApiError into a HubError."""
    from ..errors import HubError
    from .errors import ApiError
    from .storage import HubStore

    try:
        return getattr(HubStore(Path(data_dir)), method)(*args, **kwargs)
    except ApiError as e:
        raise HubError(e.message) from e


def list_tokens(data_dir: str | Path, user: str) -> list[tuple[str, str]]:
    """``(token id, created_at)`` for each token of ``user``; the id names it for
    :func:`revoke_token` (it is a prefix of the stored hash, not usable to sign in).

    Raises:
        tunekit.errors.HubError: no such user.
    """
    return _store_call(data_dir, "list_tokens", user)


def revoke_token(data_dir: str | Path, token_or_id: str) -> str:
    """Revoke one token (given in clear or by its id): the server refuses it with 401 from the
    next request on, running or not.

    Returns:
        The user the token belonged to.

    Raises:
        tunekit.errors.HubError: no such token.
    """
    return _store_call(data_dir, "revoke_token", token_or_id.strip())


def rotate_token(data_dir: str | Path, user: str) -> str:
    """Revoke every token of ``user`` and return one new token, atomically.

    Raises:
        tunekit.errors.HubError: no such user.
    """
    return _store_call(data_dir, "rotate_tokens", user)


def remove_user(data_dir: str | Path, name: str, *, delete_repos: bool = False) -> list[str]:
    """Remove a user: their tokens stop working at once and their org memberships end.

    Args:
        data_dir: the hub's data folder.
        name: the user.
        delete_repos: also delete the repos under the user's namespace; without it a user who
            owns repos is refused (a new user of the same name would inherit them).

    Returns:
        The ids of the repos deleted.

    Raises:
        tunekit.errors.HubError: no such user, or they own repos and ``delete_repos`` is false.
    """
    return _store_call(data_dir, "remove_user", name, delete_repos=delete_repos)


def remove_member(data_dir: str | Path, org: str, user: str) -> None:
    """Take ``user`` out of organization ``org``, effective from the next request.

    Raises:
        tunekit.errors.HubError: ``user`` is not a member of ``org``.
    """
    _store_call(data_dir, "remove_member", org, user)


def client_hint(url: str) -> str:
    """What clients set to use the hub at ``url``: the endpoint, and Xet off (the hub stores
    files through LFS, and huggingface_hub uses Xet whenever ``hf_xet`` is installed)."""
    return (
        f"tunekit hub at {url}. Clients set, before Python or `hf` starts:\n"
        f"  export HF_ENDPOINT={url}\n"
        "  export HF_TOKEN=<a token from `tunekit hub user add NAME`>\n"
        "  export HF_HUB_DISABLE_XET=1   # this hub has no Xet storage; uploads go through LFS"
    )


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
