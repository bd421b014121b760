"""Content-addressed file store: every file version lives once, at ``blobs/ab/cd/<sha256>``.

A blob is written to ``tmp/`` first, hashed while it streams in, checked against the expected
sha256 and size, fsynced, and only then renamed into place. So a blob file that exists is always
complete and correct, and no database row is needed to say so. (Whether a *repo* may use a blob
is another matter: see :mod:`.grants`.)

Temporary files carry the writing process's id, so a server starting up can delete those left by a
killed process without touching the uploads of another server running on the same data dir.
Folders are ``0700`` and files ``0600``: only the account running the hub reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ApiError, bad_request
from .database import private_dir
from .validate import check_oid


def tmp_prefix(kind: str) -> str:
    """Name prefix of this process's temporary files (``kind-<pid>-``)."""
    return f"{kind}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobWriter:
    """Receives one blob chunk by chunk; :meth:`finish` verifies and publishes it.

    Use as a context manager so an aborted upload leaves no temporary file behind.
    """

    def __init__(self, store: BlobStore, max_bytes: int):
        self._store = store
        self._max = max_bytes
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix=tmp_prefix("upload"))
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
        private_dir(dest.parent, levels=2)  # blobs/ab/cd/
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
        private_dir(self.root)
        private_dir(self.tmp_dir)

    def clean_tmp(self) -> int:
        """Delete temporary files left by processes that died mid-upload (``kill -9``, power loss).

        Returns:
            How many files were removed.
        """
        removed = 0
        for path in self.tmp_dir.iterdir():
            parts = path.name.split("-")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            # Our own pid on a leftover file means a dead process had it before us.
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
                removed += 1
        return removed

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
