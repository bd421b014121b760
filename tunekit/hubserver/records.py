"""What the hub stores, as plain values: repos, commits, tree entries and commit operations.

Each repo has a random ``uid`` besides its row id. SQLite hands a deleted repo's row id to the next
repo created, so anything that outlives a request (a commit in flight, an upload grant, a signed
upload URL) names the repo by ``uid``, never by row id.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

# What a new repo starts with, as on huggingface.co: one commit holding a .gitattributes that
# marks the usual binary formats as LFS. The preupload endpoint applies the same patterns.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model"
    " *.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar"
    " *.safetensors *.tar *.tar.* *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
DEFAULT_BRANCH = "main"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``blobId`` / ETag of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class Entry:
    """One file of a tree snapshot.

    Attributes:
        sha256: content hash; names the blob on disk and is the LFS oid.
        size: content size in bytes.
        lfs: whether the file was committed through LFS.
        oid: git blob id: of the content for regular files, of the LFS pointer for LFS files.
    """

    sha256: str
    size: int
    lfs: bool
    oid: str

    @classmethod
    def regular(cls, sha256: str, data: bytes) -> Entry:
        """Entry for a file committed inline."""
        return cls(sha256, len(data), False, git_blob_oid(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> Entry:
        """Entry for a file committed through LFS."""
        return cls(sha256, size, True, git_blob_oid(lfs_pointer(sha256, size)))

    @property
    def pointer_size(self) -> int:
        """Size of the LFS pointer file (reported as ``pointerSize``)."""
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Repo:
    """A repo row. ``repo_id`` is ``namespace/name``."""

    pk: int
    type: str
    namespace: str
    name: str
    private: bool
    sdk: str | None
    created_at: str
    uid: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Commit:
    """A commit row (``tree`` is the id of its tree snapshot)."""

    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    tree: str


# Operations of a commit, applied in order.
@dataclass(frozen=True)
class AddFile:
    path: str
    entry: Entry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = AddFile | DeleteFile | DeleteFolder


def repo_from_row(row: sqlite3.Row) -> Repo:
    """The :class:`Repo` of a ``repos`` row."""
    return Repo(
        row["pk"],
        row["type"],
        row["namespace"],
        row["name"],
        bool(row["private"]),
        row["sdk"],
        row["created_at"],
        row["uid"],
    )


def commit_from_row(row: sqlite3.Row) -> Commit:
    """The :class:`Commit` of a ``commits`` row."""
    return Commit(
        row["id"],
        row["parent"],
        row["title"],
        row["message"],
        row["author"],
        row["date"],
        row["tree"],
    )
