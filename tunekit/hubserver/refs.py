"""Revisions: branches, tags, and what a revision (branch, tag, full or short commit id) names.

Branches live in the ``refs`` table and move with each commit; tags live in ``tags`` and never
move. A branch and a tag never share a name.
"""

from __future__ import annotations

import sqlite3

from .database import Database
from .errors import ApiError, bad_request, revision_not_found
from .records import DEFAULT_BRANCH, Commit, Repo, commit_from_row
from .validate import check_branch, is_commit_id, is_short_commit_id


class RefStore(Database):
    """Branches and tags of the repos of one hub data dir (part of :class:`.storage.HubStore`)."""

    def branches(self, repo: Repo) -> dict[str, str]:
        """Branch name → head commit id."""
        with self.read() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM refs WHERE repo = ? ORDER BY name", (repo.pk,)
            )
            return {r["name"]: r["commit_id"] for r in rows}

    def tags(self, repo: Repo) -> dict[str, str]:
        """Tag name → commit id."""
        with self.read() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM tags WHERE repo = ? ORDER BY name", (repo.pk,)
            )
            return {r["name"]: r["commit_id"] for r in rows}

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """The commit a branch, a tag, or a full or short (7+ hex) commit id of this repo names.

        Branches win over tags (the two never share a name), and both over commit ids, as in git.

        Raises:
            ApiError: 404 ``RevisionNotFound``; 400 for a short id that matches several commits.
        """
        with self.read() as db:
            found = _resolve(db, repo.pk, revision)
        if found is None:
            raise revision_not_found(revision)
        return commit_from_row(found)

    def create_branch(self, repo: Repo, branch: str, start: Commit) -> None:
        """Point a new branch at ``start``.

        Raises:
            ApiError: 409 if the branch (or a tag of that name) exists.
        """
        check_branch(branch)
        with self.write() as db:
            if db.execute(
                "SELECT 1 FROM tags WHERE repo = ? AND name = ?", (repo.pk, branch)
            ).fetchone():
                raise ApiError(409, f"A tag named {branch!r} exists: choose another branch name")
            try:
                db.execute("INSERT INTO refs VALUES (?, ?, ?)", (repo.pk, branch, start.id))
            except sqlite3.IntegrityError:
                raise ApiError(409, f"Branch {branch!r} already exists") from None

    def delete_branch(self, repo: Repo, branch: str) -> None:
        """Remove a branch (not ``main``); its commits stay reachable by id."""
        if branch == DEFAULT_BRANCH:
            raise ApiError(403, "Cannot delete the main branch")
        with self.write() as db:
            cur = db.execute("DELETE FROM refs WHERE repo = ? AND name = ?", (repo.pk, branch))
            if cur.rowcount == 0:
                raise revision_not_found(branch)

    def create_tag(self, repo: Repo, tag: str, target: Commit, message: str = "") -> None:
        """Tag ``target``. Tags do not move; delete and create again to retarget.

        Raises:
            ApiError: 400 for a bad name, 409 if the tag (or a branch of that name) exists.
        """
        check_branch(tag, "tag")
        with self.write() as db:
            if db.execute(
                "SELECT 1 FROM refs WHERE repo = ? AND name = ?", (repo.pk, tag)
            ).fetchone():
                raise ApiError(409, f"A branch named {tag!r} exists: choose another tag name")
            try:
                db.execute(
                    "INSERT INTO tags VALUES (?, ?, ?, ?)", (repo.pk, tag, target.id, message)
                )
            except sqlite3.IntegrityError:
                raise ApiError(409, f"Tag {tag!r} already exists") from None

    def delete_tag(self, repo: Repo, tag: str) -> None:
        """Remove a tag; the commit stays."""
        with self.write() as db:
            cur = db.execute("DELETE FROM tags WHERE repo = ? AND name = ?", (repo.pk, tag))
            if cur.rowcount == 0:
                raise revision_not_found(tag)


def _resolve(db: sqlite3.Connection, repo_pk: int, revision: str) -> sqlite3.Row | None:
    commit_id = None
    for table in ("refs", "tags"):
        row = db.execute(
            f"SELECT commit_id FROM {table} WHERE repo = ? AND name = ?", (repo_pk, revision)
        ).fetchone()
        if row is not None:
            commit_id = row["commit_id"]
            break
    if commit_id is None and is_commit_id(revision):
        commit_id = revision
    if commit_id is not None:
        return db.execute(
            "SELECT * FROM commits WHERE id = ? AND repo = ?", (commit_id, repo_pk)
        ).fetchone()
    if is_short_commit_id(revision):
        return commit_by_prefix(db, repo_pk, revision)
    return None


def commit_by_prefix(db: sqlite3.Connection, repo_pk: int, prefix: str) -> sqlite3.Row | None:
    """The commit of the repo whose id starts with ``prefix`` (hex only, so LIKE is safe)."""
    rows = db.execute(
        "SELECT * FROM commits WHERE repo = ? AND id LIKE ? LIMIT 2",
        (repo_pk, prefix.lower() + "%"),
    ).fetchall()
    if len(rows) > 1:
        raise bad_request(f"Ambiguous short commit id {prefix!r}: give more of its hex digits")
    return rows[0] if rows else None
