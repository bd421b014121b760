"""File downloads: ``HEAD``/``GET /{prefix}{repo_id}/resolve/{revision}/{path}``."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from .context import find_repo, hub_of
from .errors import entry_not_found
from .validate import check_repo_path, check_revision

router = APIRouter()


def _resolve(
    request: Request, rtype: str, namespace: str, name: str, revision: str, path: str
) -> FileResponse:
    revision = check_revision(revision)
    path = check_repo_path(path)
    repo, _ = find_repo(request, rtype, namespace, name)
    hub = hub_of(request)
    commit = hub.store.resolve(repo, revision)
    entry = hub.store.tree(commit).get(path)
    if entry is None:
        raise entry_not_found(path)
    # What hf_hub_download reads: the commit (X-Repo-Commit), the etag naming the cached blob
    # (git blob id for regular files, sha256 for LFS ones, as on huggingface.co) and the size.
    headers = {
        "X-Repo-Commit": commit.id,
        "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"',
        "Cache-Control": "private, max-age=0" if repo.private else "public, max-age=0",
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return FileResponse(
        hub.blobs.path(entry.sha256),
        headers=headers,
        media_type=media_type,
        filename=path.rsplit("/", 1)[-1],
        content_disposition_type="inline",
    )


def _endpoint(rtype: str):
    def resolve(
        request: Request, namespace: str, name: str, revision: str, path: str
    ) -> FileResponse:
        return _resolve(request, rtype, namespace, name, revision, path)

    return resolve


# Models have no URL prefix. The prefixed routes come first, so a dataset or space URL is never
# read as a model one.
for _prefix, _rtype in (("datasets/", "dataset"), ("spaces/", "space"), ("", "model")):
    router.add_api_route(
        f"/{_prefix}{{namespace}}/{{name}}/resolve/{{revision}}/{{path:path}}",
        _endpoint(_rtype),
        methods=["GET", "HEAD"],
        name=f"resolve_{_rtype}",
    )
