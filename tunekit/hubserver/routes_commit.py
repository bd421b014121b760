"""Writing to a repo: ``preupload`` (regular or LFS, per file) and ``commit`` (NDJSON)."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from typing import IO

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from .bodies import read_json, spool_body
from .context import Hub, find_repo, hub_of, repo_url
from .errors import ApiError, bad_request
from .grants import not_uploaded
from .records import LFS_PATTERNS, AddFile, DeleteFile, DeleteFolder, Entry, Operation, Repo
from .settings import HubSettings
from .validate import check_oid, check_repo_path, check_revision, is_commit_id, is_short_commit_id

router = APIRouter()


def wants_lfs(path: str, size: int, sample: bytes, settings: HubSettings) -> bool:
    """Whether a file should go through LFS: big, binary-looking, or of a usual binary format.

    Empty files never do (the client forces them inline anyway).
    """
    if size == 0:
        return False
    if size >= settings.lfs_threshold_bytes or b"\0" in sample:
        return True
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in LFS_PATTERNS)


@router.post("/api/{segment}/{namespace}/{name}/preupload/{revision:path}")
async def preupload(
    request: Request, segment: str, namespace: str, name: str, revision: str
) -> dict:
    revision = check_revision(revision)
    repo, _ = find_repo(request, segment, namespace, name, write=True)
    body = await read_json(request)
    hub = hub_of(request)
    files = body.get("files")
    if not isinstance(files, list):
        raise bad_request("Expected 'files': a list of {path, size, sample}")
    commit = hub.store.resolve(repo, revision)
    tree = hub.store.tree(commit)
    answers = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("size"), int) or item["size"] < 0:
            raise bad_request("Each file needs 'path' and a non-negative integer 'size'")
        path = check_repo_path(item.get("path"))
        if item["size"] > hub.settings.max_file_bytes:
            raise ApiError(
                413,
                f"{path}: {item['size']} bytes is over the limit of {hub.settings.max_file_bytes}",
            )
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except binascii.Error:
            raise bad_request(f"{path}: 'sample' is not valid base64") from None
        mode = "lfs" if wants_lfs(path, item["size"], sample, hub.settings) else "regular"
        # The client skips files whose remote oid equals its local one: sha256 for LFS uploads,
        # git blob id for regular ones.
        existing = tree.get(path)
        oid = None
        if existing is not None:
            oid = existing.sha256 if mode == "lfs" else (None if existing.lfs else existing.oid)
        answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return {"files": answers, "commitOid": commit.id}


def _parse_operation(hub: Hub, repo: Repo, author: str, key: str, value: dict) -> Operation:
    if key == "file":
        path = check_repo_path(value.get("path"))
        if value.get("encoding", "base64") != "base64":
            raise bad_request(f"{path}: only base64 encoding is supported")
        content = value.get("content")
        if not isinstance(content, str):
            raise bad_request(f"{path}: missing 'content'")
        if len(content) > hub.settings.max_inline_bytes * 4 // 3 + 4:
            raise ApiError(413, f"{path}: too large to commit inline; upload it through LFS")
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            raise bad_request(f"{path}: 'content' is not valid base64") from None
        return AddFile(path, Entry.regular(hub.blobs.put_bytes(data), data))
    if key == "lfsFile":
        path = check_repo_path(value.get("path"))
        if value.get("algo", "sha256") != "sha256":
            raise bad_request(f"{path}: only sha256 LFS oids are supported")
        oid = check_oid(value.get("oid"))
        stored = hub.blobs.size(oid)
        # One answer for "not stored" and "stored, but not yours": a sha256 is no key. The store
        # checks again inside the commit's transaction; this earlier check keeps the size
        # comparison below from telling anyone the size of another repo's file.
        if stored is None or not hub.store.may_reference(repo, author, oid):
            raise not_uploaded(path, oid)
        if value.get("size") is not None and value["size"] != stored:
            raise bad_request(f"{path}: LFS object {oid} has {stored} bytes, not {value['size']}")
        return AddFile(path, Entry.large(oid, stored))
    if key == "deletedFile":
        return DeleteFile(check_repo_path(value.get("path")))
    if key == "deletedFolder":
        return DeleteFolder(check_repo_path(str(value.get("path", "")).rstrip("/")))
    raise bad_request(f"Unknown commit operation {key!r}")


def _commit_from_ndjson(hub: Hub, repo: Repo, author: str, branch: str, body: IO[bytes]) -> str:
    """Parse the NDJSON payload, store inline files, then commit everything at once.

    Blobs are stored before the commit; if the commit then fails they are merely unreferenced.
    """
    max_line = hub.settings.max_inline_bytes * 4 // 3 + 64 * 1024
    header: dict | None = None
    operations: list[Operation] = []
    for raw in iter(lambda: body.readline(max_line + 1), b""):
        if len(raw) > max_line:
            raise ApiError(413, "Commit payload line too long: upload large files through LFS")
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            raise bad_request("Commit payload is not valid NDJSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise bad_request("Each commit payload line needs 'key' and an object 'value'")
        if header is None:
            if item.get("key") != "header":
                raise bad_request("The first line of a commit payload must be its header")
            header = item["value"]
            continue
        operations.append(_parse_operation(hub, repo, author, item.get("key"), item["value"]))
    if header is None:
        raise bad_request("Empty commit payload")
    title = header.get("summary")
    if not isinstance(title, str) or not title.strip():
        raise bad_request("The commit needs a non-empty 'summary'")
    parent = header.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not is_short_commit_id(parent)):
        raise bad_request("'parentCommit' must be a commit id (7 to 40 hex digits)")
    if parent is not None:
        parent = parent.lower()
    return hub.store.commit(
        repo,
        branch,
        operations,
        title=title.strip(),
        message=str(header.get("description") or ""),
        author=author,
        parent_commit=parent,
    )


@router.post("/api/{segment}/{namespace}/{name}/commit/{revision:path}")
async def commit(request: Request, segment: str, namespace: str, name: str, revision: str) -> dict:
    if request.query_params.get("create_pr") in ("1", "true"):
        raise bad_request("This hub does not support pull requests: commit to a branch instead")
    revision = check_revision(revision)
    repo, caller = find_repo(request, segment, namespace, name, write=True)
    if is_commit_id(revision):
        raise bad_request("Commits go to a branch, not to a commit id")
    hub = hub_of(request)
    body = await spool_body(request, hub.settings.max_commit_bytes)
    try:
        oid = await run_in_threadpool(_commit_from_ndjson, hub, repo, caller.name, revision, body)
    finally:
        body.close()
    return {
        "success": True,
        "commitOid": oid,
        "commitUrl": f"{repo_url(request, repo)}/commit/{oid}",
        "hookOutput": "",
        "pullRequestUrl": None,
    }
