"""Writing history: commits (file operations on a branch head) and squashing a branch.

Every commit stores a full snapshot of its tree (path → sha256, size, lfs flag, git oid),
deduplicated by content, so any revision resolves with one lookup. Each write re-checks, under
the write lock, that the repo still exists and the author may still write it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid

from . import grants
from .accounts import writable_pk
from .database import Database, now_iso
from .errors import ApiError, bad_request, entry_not_found, revision_not_found
from .grants import not_uploaded
from .records import AddFile, DeleteFile, Entry, Operation, Repo
from .refs import commit_by_prefix


class CommitStore(Database):
    """Commits and squashes of one hub data dir (part of :class:`.storage.HubStore`)."""

    def commit(
        self,
        repo: Repo,
        branch: str,
        operations: list[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> str:
        """Apply ``operations`` on top of the branch head as one new commit.

        The head is read and moved inside one write transaction, so concurrent commits each see
        the previous one's result. ``parent_commit`` makes the commit conditional: it fails with
        412 when the branch has moved since the client looked.

        Returns:
            The new commit id (40 hex).

        Raises:
            ApiError: 404 ``RepoNotFound`` (the repo was deleted meanwhile), 403 (``author`` may no
                longer write it), 400 (an LFS file the author may not reference), 404
                ``RevisionNotFound`` (no such branch), 404 ``EntryNotFound`` (deleting a missing
                file or folder), 412 (``parent_commit`` is not the head).
        """
        with self.write() as db:
            # Checked again here, under the write lock: the request may have been authorised
            # long ago (a slow upload), and the repo deleted or its access changed since.
            repo_pk = writable_pk(db, repo, author)
            for op in operations:
                if isinstance(op, AddFile) and op.entry.lfs:
                    if not grants.may_reference(db, repo.uid, author, op.entry.sha256):
                        raise not_uploaded(op.path, op.entry.sha256)
            head = _branch_head(db, repo_pk, branch)
            if parent_commit is not None:
                _check_parent(db, repo_pk, branch, head, parent_commit)
            tree = _tree_at(db, head)
            _apply(tree, operations)
            added = (op.entry.sha256 for op in operations if isinstance(op, AddFile))
            grants.grant(db, repo.uid, added, "tree")
            return insert_commit(db, repo_pk, branch, head, tree, title, message, author)

    def super_squash(self, repo: Repo, branch: str, message: str, author: str) -> str:
        """Replace the history of ``branch`` by one commit holding its current files.

        Commits no other branch or tag reaches are deleted, so their files can no longer be read
        from this repo by commit id (they stay in other repos that hold the same content).

        Returns:
            The new commit id.

        Raises:
            ApiError: 404 ``RepoNotFound``, 403 (``author`` may not write the repo), 404
                ``RevisionNotFound`` (no such branch).
        """
        with self.write() as db:
            pk = writable_pk(db, repo, author)
            tree = _tree_at(db, _branch_head(db, pk, branch))
            commit_id = insert_commit(db, pk, branch, None, tree, message, "", author)
            _drop_unreachable(db, pk, repo.uid)
            return commit_id


def insert_commit(
    db: sqlite3.Connection,
    repo_pk: int,
    branch: str,
    parent: str | None,
    tree: dict[str, Entry],
    title: str,
    message: str,
    author: str,
) -> str:
    """Store ``tree`` (if new) and a commit of it on top of ``parent``, and point ``branch`` at it,
    inside the caller's write transaction.

    Returns:
        The new commit id (40 hex).
    """
    blob = json.dumps(
        {p: [e.sha256, e.size, e.lfs, e.oid] for p, e in sorted(tree.items())},
        separators=(",", ":"),
    )
    tree_id = hashlib.sha256(blob.encode()).hexdigest()
    db.execute("INSERT OR IGNORE INTO trees VALUES (?, ?)", (tree_id, blob))
    date = now_iso()
    # A random nonce keeps ids unique even for identical commits made in the same millisecond.
    seed = (
        f"{repo_pk}\n{parent}\n{tree_id}\n{author}\n{date}\n{title}\n{message}\n{uuid.uuid4()}"
    )
    commit_id = hashlib.sha1(seed.encode()).hexdigest()
    db.execute(
        "INSERT INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (commit_id, repo_pk, parent, title, message, author, date, tree_id),
    )
    db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", (repo_pk, branch, commit_id))
    return commit_id


def _branch_head(db: sqlite3.Connection, repo_pk: int, branch: str) -> str:
    row = db.execute(
        "SELECT commit_id FROM refs WHERE repo = ? AND name = ?", (repo_pk, branch)
    ).fetchone()
    if row is None:
        raise revision_not_found(branch)
    return row["commit_id"]


def _check_parent(
    db: sqlite3.Connection, repo_pk: int, branch: str, head: str, parent_commit: str
) -> None:
    """Refuse (412) a conditional commit whose ``parent_commit`` is no longer the head."""
    if len(parent_commit) < 40:
        # A short id (7+ hex) stands for the one commit of this repo it begins.
        match = commit_by_prefix(db, repo_pk, parent_commit)
        parent_commit = match["id"] if match is not None else parent_commit
    if parent_commit != head:
        raise ApiError(
            412,
            f"A commit has happened since {parent_commit} (head of {branch} is now {head})."
            " Please refresh and try again.",
        )


def _tree_at(db: sqlite3.Connection, commit_id: str) -> dict[str, Entry]:
    tree_id = db.execute("SELECT tree FROM commits WHERE id = ?", (commit_id,)).fetchone()["tree"]
    row = db.execute("SELECT entries FROM trees WHERE id = ?", (tree_id,)).fetchone()
    return {path: Entry(*values) for path, values in json.loads(row["entries"]).items()}


def _drop_unreachable(db: sqlite3.Connection, repo_pk: int, repo_uid: str) -> None:
    """Delete the repo's commits no branch or tag reaches, and the grants only they held."""
    parents = {
        r["id"]: r["parent"]
        for r in db.execute("SELECT id, parent FROM commits WHERE repo = ?", (repo_pk,))
    }
    heads = [
        r["commit_id"]
        for table in ("refs", "tags")
        for r in db.execute(f"SELECT commit_id FROM {table} WHERE repo = ?", (repo_pk,))
    ]
    reachable: set[str] = set()
    for head in heads:
        while head is not None and head not in reachable and head in parents:
            reachable.add(head)
            head = parents[head]
    doomed = [c for c in parents if c not in reachable]
    db.executemany("DELETE FROM commits WHERE id = ?", [(c,) for c in doomed])
    db.execute("DELETE FROM repo_blobs WHERE repo_uid = ? AND source = 'tree'", (repo_uid,))
    rows = db.execute(
        "SELECT trees.entries AS entries FROM commits JOIN trees ON trees.id = commits.tree"
        " WHERE commits.repo = ?",
        (repo_pk,),
    ).fetchall()
    for row in rows:
        grants.grant(db, repo_uid, (v[0] for v in json.loads(row["entries"]).values()), "tree")


def _apply(tree: dict[str, Entry], operations: list[Operation]) -> None:
    """Edit ``tree`` in place by ``operations``, in order."""
    for op in operations:
        if isinstance(op, AddFile):
            # A file may not sit where a folder is, nor under a path that is a file.
            if any(p.startswith(op.path + "/") for p in tree):
                raise bad_request(f"Cannot add file {op.path!r}: a folder with this name exists")
            parts = op.path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in tree:
                    raise bad_request(f"Cannot add {op.path!r}: {'/'.join(parts[:i])!r} is a file")
            tree[op.path] = op.entry
        elif isinstance(op, DeleteFile):
            if tree.pop(op.path, None) is None:
                raise entry_not_found(op.path)
        else:
            prefix = op.path.rstrip("/") + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise entry_not_found(op.path)
            for p in doomed:
                del tree[p]
