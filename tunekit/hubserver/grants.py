"""Which blobs a repo may reference, recorded in the ``repo_blobs`` table.

A repo holds a row for each blob uploaded through its own LFS endpoint (``source = 'upload'``)
and each blob in one of its commits (``source = 'tree'``). A commit may point at a blob only
through such a row of its own repo or a ``tree`` row of a repo the author can read, so a sha256
alone never opens another tenant's file.

These functions work inside a caller's connection (and transaction); they open none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from .errors import ApiError, bad_request


def grant(db: sqlite3.Connection, repo_uid: str, shas: Iterable[str], source: str) -> None:
    """Record that the repo ``repo_uid`` may reference each blob of ``shas``.

    Args:
        db: an open connection, inside the caller's write transaction.
        repo_uid: the repo's ``uid``.
        shas: sha256 of the blobs (repeats are fine).
        source: ``"upload"`` or ``"tree"``.
    """
    db.executemany(
        "INSERT OR IGNORE INTO repo_blobs VALUES (?, ?, ?)",
        [(repo_uid, sha, source) for sha in set(shas)],
    )


def may_reference(db: sqlite3.Connection, repo_uid: str, author: str, sha256: str) -> bool:
    """Whether a commit by ``author`` to the repo ``repo_uid`` may point at the blob ``sha256``:
    it came through this repo, or is in a commit of a repo ``author`` can read."""
    own = db.execute(
        "SELECT 1 FROM repo_blobs WHERE repo_uid = ? AND sha256 = ?", (repo_uid, sha256)
    ).fetchone()
    if own:
        return True
    # Or in a commit of a repo the author can read: public, theirs, or one of their orgs'.
    readable = db.execute(
        "SELECT 1 FROM repo_blobs JOIN repos ON repos.uid = repo_blobs.repo_uid"
        " WHERE repo_blobs.sha256 = ? AND repo_blobs.source = 'tree' AND (repos.private = 0"
        " OR repos.namespace = ? OR repos.namespace IN (SELECT org FROM members WHERE user = ?))"
        " LIMIT 1",
        (sha256, author, author),
    ).fetchone()
    return readable is not None


def backfill_grants(db: sqlite3.Connection) -> None:
    """Grant every repo the blobs already in its history (for data dirs older than the table)."""
    rows = db.execute(
        "SELECT DISTINCT repos.uid AS uid, trees.entries AS entries FROM commits"
        " JOIN repos ON repos.pk = commits.repo JOIN trees ON trees.id = commits.tree"
    ).fetchall()
    for row in rows:
        grant(db, row["uid"], (v[0] for v in json.loads(row["entries"]).values()), "tree")


def not_uploaded(path: str, sha256: str) -> ApiError:
    """The one answer for an LFS oid a commit may not use, whether or not the server stores it
    (any other wording would tell a stranger which files exist)."""
    return bad_request(
        f"{path}: LFS object {sha256} was not uploaded to this repo; upload it before committing"
    )
