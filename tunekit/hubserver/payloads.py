"""JSON shapes the client parses: repo info (``ModelInfo``/``DatasetInfo``/``SpaceInfo``), tree
entries (``RepoFile``/``RepoFolder``) and commits (``GitCommitInfo``)."""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache

from .blobs import BlobStore
from .cards import MAX_CARD_BYTES, CardError, parse_card_data, tags_from_card
from .storage import Commit, Entry, Repo

logger = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def _card_from_blob(blobs: BlobStore, sha256: str) -> dict | None:
    # Keyed by content hash, so the cache can never serve a stale card.
    try:
        return parse_card_data(blobs.read(sha256, MAX_CARD_BYTES).decode("utf-8", errors="replace"))
    except CardError as e:
        # A bad card must not break the repo's info, nor a listing that includes it: the repo is
        # shown with empty card data.
        logger.info("ignoring README.md metadata of blob %s: %s", sha256, e)
        return {}


def card_data(blobs: BlobStore, tree: dict[str, Entry]) -> dict | None:
    """Parsed YAML header of the README.md in ``tree``, if any."""
    readme = tree.get("README.md")
    return _card_from_blob(blobs, readme.sha256) if readme else None


def file_json(path: str, entry: Entry) -> dict:
    """A file as the tree and paths-info endpoints describe it."""
    data: dict = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs:
        data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return data


def folder_json(path: str, tree: dict[str, Entry]) -> dict:
    """A folder; its oid is derived from what it contains (stable for unchanged content)."""
    prefix = path + "/"
    digest = hashlib.sha1()
    for p in sorted(p for p in tree if p.startswith(prefix)):
        digest.update(f"{p}\0{tree[p].oid}\n".encode())
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}


def list_tree(tree: dict[str, Entry], folder: str, recursive: bool) -> list[dict] | None:
    """Entries under ``folder`` ("" for the root), folders first as the Hub does.

    Returns:
        The entries, or ``None`` when ``folder`` is not a folder of the tree.
    """
    prefix = folder + "/" if folder else ""
    folders: set[str] = set()
    files: list[str] = []
    for path in tree:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :].split("/")
        if recursive:
            files.append(path)
            for i in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:i]))
        elif len(rest) == 1:
            files.append(path)
        else:
            folders.add(prefix + rest[0])
    if folder and not files and not folders:
        return None
    return [folder_json(f, tree) for f in sorted(folders)] + [
        file_json(p, tree[p]) for p in sorted(files)
    ]


def commit_json(commit: Commit) -> dict:
    """One commit of ``list_repo_commits``."""
    return {
        "id": commit.id,
        "title": commit.title,
        "message": commit.message,
        "authors": [{"user": commit.author, "avatar": None}],
        "date": commit.date,
    }


def repo_json(
    repo: Repo,
    commit: Commit,
    tree: dict[str, Entry],
    card: dict | None,
    *,
    siblings: bool = True,
) -> dict:
    """Repo info as ``/api/{type}s/{id}`` returns it."""
    data: dict = {
        "_id": hashlib.sha1(f"{repo.type}:{repo.uid}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "likes": 0,
        "tags": tags_from_card(card),
        "usedStorage": sum(e.size for e in tree.values()),
    }
    if card is not None:
        data["cardData"] = card
    if repo.type == "model":
        data["modelId"] = repo.repo_id
        data["downloads"] = 0
        if card:
            data["library_name"] = card.get("library_name")
            data["pipeline_tag"] = card.get("pipeline_tag")
    elif repo.type == "dataset":
        data["downloads"] = 0
    else:
        data["sdk"] = (card or {}).get("sdk") or repo.sdk
    if siblings:
        data["siblings"] = [
            {
                "rfilename": path,
                "size": e.size,
                "blobId": e.oid,
                **(
                    {"lfs": {"size": e.size, "sha256": e.sha256, "pointerSize": e.pointer_size}}
                    if e.lfs
                    else {}
                ),
            }
            for path, e in sorted(tree.items())
        ]
    return data
