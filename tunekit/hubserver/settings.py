"""Settings of one hub server instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class HubSettings:
    """Where the hub keeps its data and the limits it enforces.

    Attributes:
        data_dir: folder holding ``hub.sqlite`` (metadata) and ``blobs/`` (file contents by sha256).
        max_file_bytes: largest file accepted, LFS or not.
        max_inline_bytes: largest file accepted inline (base64 in the commit payload); bigger files
            must go through LFS.
        lfs_threshold_bytes: files of this size or more are told to use LFS at preupload. The client
            assumes regular files are at most 5 MB, so keep it at or below that.
        max_commit_bytes: largest commit payload (NDJSON body) accepted.
        page_size: entries per page for tree and commit listings (clients may ask for fewer).
        public_url: base URL written into links (repo URLs, LFS upload URLs); by default the URL the
            request came in on, which is right unless the server sits behind a proxy.
    """

    data_dir: Path
    max_file_bytes: int = 5 * GiB
    max_inline_bytes: int = 10 * MiB
    lfs_threshold_bytes: int = 5 * MiB
    max_commit_bytes: int = 1 * GiB
    page_size: int = 1000
    public_url: str | None = None
