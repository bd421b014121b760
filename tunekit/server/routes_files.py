"""``/v1/files``: upload (multipart), list, retrieve, delete and download, as OpenAI's Files API.

Each caller (API key) sees only its own files; another's answer 404.
"""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..jobs.owners import caller
from .routes_jobs import call, service_of
from .schemas_jobs import Deleted, FileObject, Page

router = APIRouter()


def file_object(row: dict) -> FileObject:
    return FileObject(id=row["id"], bytes=row["bytes"], created_at=row["created_at"], filename=row["filename"],
                      purpose=row["purpose"])


@router.post("/v1/files", response_model_exclude_none=True)
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> FileObject:
    service = service_of(request)
    row = await run_in_threadpool(call, service.create_file, caller(), purpose=purpose,
                                  filename=file.filename or "upload", stream=file.file)
    return file_object(row)


@router.get("/v1/files", response_model_exclude_none=True)
async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10000,
                     order: str = "desc") -> Page:
    rows, more = call(service_of(request).files, caller(), purpose=purpose, after=after,
                      limit=max(1, min(limit, 10000)), order=order)
    return Page.of([file_object(r) for r in rows], more)


@router.get("/v1/files/{file_id}", response_model_exclude_none=True)
async def get_file(request: Request, file_id: str) -> FileObject:
    return file_object(call(service_of(request).file, caller(), file_id))


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Deleted:
    call(service_of(request).delete_file, caller(), file_id)
    return Deleted(id=file_id, object="file")


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> FileResponse:
    service = service_of(request)
    row = call(service.file, caller(), file_id)
    return FileResponse(call(service.content, caller(), file_id), media_type="application/octet-stream",
                        filename=row["filename"])
