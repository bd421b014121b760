"""Reading request bodies, bounded: never more than a limit, never before the caller is known.

Every route authenticates (``find_repo``/``caller_of``) *before* it calls these, so an anonymous
or badly authenticated request is answered without its body being read at all; and a body that
announces more than the limit is refused with 413 before its first byte is read.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO
from urllib.parse import parse_qs

from fastapi import Request

from .blobs import tmp_prefix
from .context import hub_of
from .errors import ApiError, bad_request

MAX_JSON_BYTES = 10 * 1024 * 1024
# Bodies up to this size stay in memory; bigger ones (commit payloads) go to a file in tmp/.
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024


def check_length(request: Request, limit: int, what: str = "Request body") -> None:
    """413 when the body announces more than ``limit`` bytes (``Content-Length``)."""
    announced = request.headers.get("content-length")
    if announced is None:
        return
    try:
        size = int(announced)
    except ValueError:
        raise bad_request(f"Invalid Content-Length header {announced!r}") from None
    if size > limit:
        raise ApiError(413, f"{what} too large: {size} bytes, the limit is {limit}")


async def read_body(request: Request, limit: int, what: str = "Request body") -> bytes:
    """The whole body, at most ``limit`` bytes (413 as soon as it grows past the limit)."""
    check_length(request, limit, what)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{what} too large: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict:
    """The request body as a JSON object (400 otherwise, 413 past ``limit``)."""
    body = await read_body(request, limit)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError) as e:
        raise bad_request(f"Invalid JSON body: {e}") from None
    if not isinstance(data, dict):
        raise bad_request("Expected a JSON object")
    return data


async def read_form(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (what the client sends to paths-info)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise bad_request(
            f"Expected an application/x-www-form-urlencoded body, not {ctype!r}"
        )
    body = await read_body(request, limit)
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100_000)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"Invalid form body: {e}") from None


async def spool_body(request: Request, limit: int, what: str = "Commit payload") -> IO[bytes]:
    """Buffer the body (in memory up to 8 MiB, then in ``tmp/``); 413 past ``limit``."""
    check_length(request, limit, what)
    spool = tempfile.SpooledTemporaryFile(
        max_size=SPOOL_IN_MEMORY_BYTES,
        dir=hub_of(request).blobs.tmp_dir,
        prefix=tmp_prefix("spool"),
    )
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"{what} too large: more than {limit} bytes")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool
