"""What every route needs: the hub's stores, who is calling, and what they may see or change."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from .blobs import BlobStore
from .database import private_dir
from .errors import ApiError, repo_not_found
from .records import Repo
from .settings import HubSettings
from .storage import HubStore
from .validate import URL_PREFIX, check_name, repo_type

# The client's message for a bad token; with it, huggingface_hub reports a plain 401 instead of
# guessing "repository not found".
INVALID_TOKEN = "Invalid credentials in Authorization header"
UPLOAD_URL_TTL_S = 24 * 3600


def _load_secret(data_dir: Path) -> bytes:
    """Key signing LFS upload URLs, kept in the data dir so URLs stay valid across restarts."""
    path = data_dir / "upload-secret"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        os.replace(tmp, path)
    return path.read_bytes()


class Hub:
    """One server's state: settings, metadata store, blob store and the URL-signing key."""

    def __init__(self, settings: HubSettings):
        self.settings = settings
        data_dir = Path(settings.data_dir)
        private_dir(data_dir)
        self.store = HubStore(data_dir)
        self.blobs = BlobStore(data_dir)
        # Uploads cut off by a crash leave their temporary files; nothing else ever removes them.
        self.blobs.clean_tmp()
        self._secret = _load_secret(data_dir)

    def sign_upload(self, repo_uid: str, oid: str, size: int) -> tuple[int, str]:
        """Expiry and signature authorising one LFS PUT into one repo.

        The client sends that PUT without its token (it expects a presigned storage URL), so the
        authorisation travels in the URL, as with S3. The repo's ``uid`` is signed too: the
        upload grants that repo (and only it) the right to commit the object.
        """
        expires = int(time.time()) + UPLOAD_URL_TTL_S
        return expires, self._signature(repo_uid, oid, size, expires)

    def check_upload_signature(
        self, repo_uid: str, oid: str, size: int, expires: int, signature: str
    ) -> None:
        """Raise 403 unless the signature is ours and still valid."""
        expected = self._signature(repo_uid, oid, size, expires)
        if expires < time.time() or not hmac.compare_digest(expected, signature):
            raise ApiError(
                403, "Upload URL is invalid or expired: ask the LFS batch endpoint again"
            )

    def _signature(self, repo_uid: str, oid: str, size: int, expires: int) -> str:
        msg = f"{repo_uid}:{oid}:{size}:{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


def hub_of(request: Request) -> Hub:
    """The :class:`Hub` serving this request."""
    return request.app.state.hub


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a user (with their orgs) or anonymous (``name is None``)."""

    name: str | None = None
    orgs: frozenset[str] = field(default_factory=frozenset)

    def owns(self, namespace: str) -> bool:
        """Whether the caller may write in ``namespace`` (their own, or an org they belong to)."""
        return self.name is not None and (namespace == self.name or namespace in self.orgs)

    def can_read(self, repo: Repo) -> bool:
        """Public repos are readable by all; private ones only by their owners."""
        return not repo.private or self.owns(repo.namespace)


def caller_of(request: Request) -> Caller:
    """Identify the caller from ``Authorization: Bearer <token>``.

    Raises:
        ApiError: 401 when a token is sent but unknown (never silently anonymous).
    """
    header = request.headers.get("authorization")
    if not header:
        return Caller()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, INVALID_TOKEN)
    hub = hub_of(request)
    name = hub.store.user_for_token(token)
    if name is None:
        raise ApiError(401, INVALID_TOKEN)
    return Caller(name, frozenset(hub.store.orgs_of(name)))


def require_user(caller: Caller) -> str:
    """The caller's name, or 401 for anonymous requests."""
    if caller.name is None:
        raise ApiError(401, "You must be authenticated (pass a token) to do this")
    return caller.name


def find_repo(
    request: Request, segment_or_type: str, namespace: str, name: str, *, write: bool = False
) -> tuple[Repo, Caller]:
    """Look up a repo the caller may read (or write, with ``write=True``).

    Private repos the caller cannot read answer 404 exactly like missing ones, so their existence
    does not leak. A public repo the caller cannot write answers 403 (or 401 when anonymous).

    Args:
        segment_or_type: ``"models"``/``"datasets"``/``"spaces"`` or ``"model"``/… .
    """
    rtype = segment_or_type if segment_or_type in URL_PREFIX else repo_type(segment_or_type)
    caller = caller_of(request)
    check_name(namespace, "namespace")
    check_name(name, "repo name")
    repo = hub_of(request).store.get_repo(rtype, namespace, name)
    if repo is None or not caller.can_read(repo):
        raise repo_not_found(f"{namespace}/{name}")
    if write and not caller.owns(repo.namespace):
        require_user(caller)
        raise ApiError(403, f"You don't have write access to {repo.repo_id}")
    return repo, caller


def base_url(request: Request) -> str:
    """Base URL for links the client will follow (no trailing slash).

    ``--public-url`` when set; otherwise the address the connection actually arrived on, never the
    request's ``Host`` header, which the sender chooses (it would let anyone hand out upload links
    to a host of their choosing).
    """
    configured = hub_of(request).settings.public_url
    if configured:
        return configured.rstrip("/")
    server = request.scope.get("server")
    if not server:
        return str(request.base_url).rstrip("/")  # not over a socket (in-process test clients)
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    scheme = request.url.scheme
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def repo_url(request: Request, repo: Repo) -> str:
    """Web URL of a repo, as huggingface_hub's ``RepoUrl`` parses it."""
    return f"{base_url(request)}/{URL_PREFIX[repo.type]}{repo.repo_id}"
