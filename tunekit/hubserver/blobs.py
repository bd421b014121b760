"""Content-addressed file store: every file version lives once, at ``blobs/ab/cd/<sha256>``.

A blob is written to ``tmp/`` first, hashed while it streams in, checked against the expected
sha256 and size, fsynced, and only then renamed into place. So a blob file that exists is always
complete and correct, and no database row is needed to say so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ApiError, bad_request
from .validate import check_oid


class BlobWriter:
    """Receives one blob chunk by chunk; :meth:`finish` verifies and publishes it.

    Use as a context manager so an aborted upload leaves no temporary file behind.
    """

    def __init__(self, store: BlobStore, max_bytes: int):
        self._store = store
        self._max = max_bytes
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises 413 as soon as the blob grows past the limit."""
        self.size += len(chunk)
        if self.size > self._max:
            raise ApiError(413, f"File too large: more than {self._max} bytes")
        self._sha.update(chunk)
        self._file.write(chunk)

    def finish(self, *, sha256: str | None = None, size: int | None = None) -> tuple[str, int]:
        """Check the content against what the client announced and move it into the store.

        Returns:
            ``(sha256, size)`` of the stored blob.

        Raises:
            ApiError: 400 when the size or the sha256 differs from the announced one.
        """
        digest = self._sha.hexdigest()
        if size is not None and self.size != size:
            raise bad_request(f"Size mismatch: announced {size} bytes, received {self.size}")
        if sha256 is not None and digest != sha256:
            raise bad_request(f"sha256 mismatch: announced {sha256}, received {digest}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        dest = self._store.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, dest)
        return digest, self.size

    def close(self) -> None:
        """Drop the temporary file if the blob was not published."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BlobStore:
    """The ``blobs/`` and ``tmp/`` folders of a hub data dir."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "blobs"
        self.tmp_dir = Path(data_dir) / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (the oid is validated: it names a file)."""
        check_oid(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def size(self, sha256: str) -> int | None:
        """Size of the stored blob, or ``None`` when it is not stored."""
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self, max_bytes: int) -> BlobWriter:
        """A :class:`BlobWriter` refusing more than ``max_bytes``."""
        return BlobWriter(self, max_bytes)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (deduplicated) and return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self.size(digest) == len(data):
            return digest
        with self.writer(len(data)) as w:
            w.write(data)
            w.finish(sha256=digest)
        return digest

    def read(self, sha256: str, limit: int) -> bytes:
        """The first ``limit`` bytes of a stored blob."""
        with open(self.path(sha256), "rb") as f:
            return f.read(limit)
