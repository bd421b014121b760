"""Uploaded files' content, stored once per content under ``<data>/files/<sha256[:2]>/<sha256>``.

Names from requests never reach the file system: a blob's path comes from its hash only, and a
job reads its files through links named by file id (``<job>/<file id>.jsonl``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class TooLarge(Exception):
    """The upload passed the size limit (nothing was kept)."""


class Blobs:
    """Content-addressed blobs under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, stream: BinaryIO, *, limit: int) -> tuple[str, int]:
        """Copy ``stream`` in, hashing as it goes; refuse it once it passes ``limit`` bytes.

        Returns:
            ``(sha256, size)``.

        Raises:
            TooLarge: more than ``limit`` bytes came.
        """
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(limit)
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            target = self.path(sha)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)  # the same content twice is the same file
            return sha, size
        finally:
            Path(tmp).unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def link(self, sha256: str, target: Path) -> Path:
        """Make ``target`` show the blob (a hard link, a copy where links are refused)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(self.path(sha256), target)
        except OSError:
            import shutil

            shutil.copyfile(self.path(sha256), target)
        return target
