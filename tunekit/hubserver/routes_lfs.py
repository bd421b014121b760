"""Git LFS as the Hub client uses it: batch endpoint, signed object upload, verify step."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .bodies import check_length, read_json
from .context import base_url, find_repo, hub_of
from .errors import ApiError, bad_request
from .validate import URL_PREFIX, check_oid

router = APIRouter()
LFS_JSON = "application/vnd.git-lfs+json"


async def _batch(request: Request, rtype: str, namespace: str, name: str) -> JSONResponse:
    repo, caller = find_repo(request, rtype, namespace, name, write=True)
    body = await read_json(request)
    if body.get("operation") != "upload":
        raise bad_request(
            "Only the LFS 'upload' operation is supported; download files with /resolve"
        )
    hub = hub_of(request)
    base = base_url(request)
    verify_url = f"{base}/{URL_PREFIX[rtype]}{repo.repo_id}.git/info/lfs/objects/verify"
    limit = hub.settings.max_file_bytes
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise bad_request("Expected 'objects': a list of {oid, size}")
    out = []
    for obj in objects:
        oid = check_oid(obj.get("oid") if isinstance(obj, dict) else None)
        size = obj.get("size")
        if not isinstance(size, int) or size < 0:
            raise bad_request(f"Object {oid}: 'size' must be a non-negative integer")
        if size > limit:
            message = f"Object is {size} bytes, over the limit of {limit}"
            out.append({"oid": oid, "size": size, "error": {"code": 422, "message": message}})
            continue
        if hub.blobs.size(oid) == size and hub.store.may_reference(repo, caller.name, oid):
            # Already stored *and this repo may use it*: an object without actions is one the
            # client skips. Any other stored object must be uploaded again, which proves the
            # caller holds its content (else this answer would tell who stores which file).
            out.append({"oid": oid, "size": size})
            continue
        expires, sig = hub.sign_upload(repo.uid, oid, size)
        query = f"repo={repo.uid}&size={size}&expires={expires}&sig={sig}"
        actions = {
            "upload": {"href": f"{base}/api/lfs-objects/{oid}?{query}"},
            "verify": {"href": verify_url},
        }
        out.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
    return JSONResponse(
        {"transfer": "basic", "hash_algo": "sha256", "objects": out}, media_type=LFS_JSON
    )


async def _verify(request: Request, rtype: str, namespace: str, name: str) -> JSONResponse:
    repo, caller = find_repo(request, rtype, namespace, name, write=True)
    body = await read_json(request)
    oid = check_oid(body.get("oid"))
    hub = hub_of(request)
    stored = hub.blobs.size(oid) == body.get("size")
    if not stored or not hub.store.may_reference(repo, caller.name, oid):
        raise ApiError(
            404, f"LFS object {oid} of {body.get('size')} bytes was not uploaded to this repo"
        )
    return JSONResponse({"message": "ok"}, media_type=LFS_JSON)


def _endpoints(rtype: str):
    async def batch(request: Request, namespace: str, name: str) -> JSONResponse:
        return await _batch(request, rtype, namespace, name)

    async def verify(request: Request, namespace: str, name: str) -> JSONResponse:
        return await _verify(request, rtype, namespace, name)

    return batch, verify


# Models have no URL prefix. The prefixed routes come first, so a dataset or space URL is never
# read as a model one.
for _rtype in ("dataset", "space", "model"):
    _batch_endpoint, _verify_endpoint = _endpoints(_rtype)
    _base = f"/{URL_PREFIX[_rtype]}{{namespace}}/{{name}}.git/info/lfs/objects"
    router.add_api_route(
        f"{_base}/batch", _batch_endpoint, methods=["POST"], name=f"lfs_batch_{_rtype}"
    )
    router.add_api_route(
        f"{_base}/verify", _verify_endpoint, methods=["POST"], name=f"lfs_verify_{_rtype}"
    )


@router.put("/api/lfs-objects/{oid}")
async def upload_object(request: Request, oid: str) -> Response:
    """The PUT target of an upload action. The client sends it without a token (it expects a
    presigned storage URL), so it is authorised by the URL's signature instead."""
    check_oid(oid)
    hub = hub_of(request)
    try:
        repo_uid = request.query_params["repo"]
        size = int(request.query_params["size"])
        expires = int(request.query_params["expires"])
        signature = request.query_params["sig"]
    except (KeyError, ValueError):
        raise ApiError(
            403, "Upload URL is missing its repo, size, expiry or signature"
        ) from None
    # The signature is checked, and the announced length compared, before any byte is read.
    hub.check_upload_signature(repo_uid, oid, size, expires, signature)
    check_length(request, size, f"LFS object {oid}")
    with hub.blobs.writer(size) as writer:
        async for chunk in request.stream():
            writer.write(chunk)
        await run_in_threadpool(writer.finish, sha256=oid, size=size)
    await run_in_threadpool(hub.store.grant_upload, repo_uid, oid)
    return Response(status_code=200)
