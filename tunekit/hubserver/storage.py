"""Hub metadata in SQLite: :class:`HubStore`, and here its repos, trees and history.

:class:`HubStore` is the one object the server and the ``tunekit hub`` commands use. Its other
parts live in their own modules: the SQLite file and transactions in :mod:`.database`, users, orgs
and tokens in :mod:`.accounts`, branches and tags in :mod:`.refs`, writing commits in
:mod:`.commits`, which blobs a repo may reference in :mod:`.grants`, and the stored values in
:mod:`.records`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from . import grants
from .accounts import AccountStore, owns, writable_pk
from .commits import CommitStore, insert_commit
from .database import delete_repo_rows, now_iso
from .errors import ApiError, bad_request
from .records import DEFAULT_BRANCH, Commit, Entry, Repo, commit_from_row, repo_from_row
from .refs import RefStore
from .validate import check_name


class HubStore(AccountStore, RefStore, CommitStore):
    """All metadata of one hub data dir: accounts (:class:`.accounts.AccountStore`), branches
    and tags (:class:`.refs.RefStore`), commits (:class:`.commits.CommitStore`), and here repos,
    their trees and history. Safe to share between threads (see :class:`.database.Database`)."""

    # --- repos ----------------------------------------------------------------------------

    def create_repo(
        self,
        rtype: str,
        namespace: str,
        name: str,
        *,
        private: bool,
        sdk: str | None,
        author: str,
        initial_files: dict[str, Entry],
    ) -> tuple[Repo, bool]:
        """Create a repo with its initial commit on ``main`` holding ``initial_files`` (whose
        blobs the caller has stored).

        Returns:
            ``(repo, created)``; ``created`` is False when it already existed (left unchanged).
        """
        check_name(namespace, "namespace")
        check_name(name, "repo name")
        with self.write() as db:
            row = db.execute(
                "SELECT * FROM repos WHERE type = ? AND namespace = ? AND name = ?",
                (rtype, namespace, name),
            ).fetchone()
            if row is not None:
                return repo_from_row(row), False
            twin = db.execute(
                "SELECT namespace, name FROM repos WHERE type = ? AND lower(namespace) = lower(?)"
                " AND lower(name) = lower(?)",
                (rtype, namespace, name),
            ).fetchone()
            if twin is not None:
                # Clients fold case on some file systems (the cache folder), so two such repos
                # would share one local copy.
                raise bad_request(
                    f"Invalid repo id {namespace}/{name}: {twin['namespace']}/{twin['name']}"
                    " exists and differs only in letter case; choose another name"
                )
            uid = uuid.uuid4().hex
            cur = db.execute(
                "INSERT INTO repos (type, namespace, name, private, sdk, created_at, uid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rtype, namespace, name, int(private), sdk, now_iso(), uid),
            )
            repo_pk = cur.lastrowid
            insert_commit(
                db, repo_pk, DEFAULT_BRANCH, None, dict(initial_files), "initial commit", "", author
            )
            grants.grant(db, uid, (e.sha256 for e in initial_files.values()), "tree")
            row = db.execute("SELECT * FROM repos WHERE pk = ?", (repo_pk,)).fetchone()
        return repo_from_row(row), True

    def get_repo(self, rtype: str, namespace: str, name: str) -> Repo | None:
        """The repo, or ``None``."""
        with self.read() as db:
            row = db.execute(
                "SELECT * FROM repos WHERE type = ? AND namespace = ? AND name = ?",
                (rtype, namespace, name),
            ).fetchone()
        return repo_from_row(row) if row else None

    def list_repos(self, rtype: str, author: str | None = None) -> list[Repo]:
        """All repos of a type (optionally of one namespace), newest first."""
        sql, args = "SELECT * FROM repos WHERE type = ?", [rtype]
        if author:
            sql += " AND namespace = ?"
            args.append(author)
        with self.read() as db:
            return [repo_from_row(r) for r in db.execute(sql + " ORDER BY pk DESC", args)]

    def delete_repo(self, repo: Repo) -> None:
        """Forget a repo and its history. Blobs stay: they may be shared with other repos."""
        with self.write() as db:
            delete_repo_rows(db, repo)

    def set_private(self, repo: Repo, private: bool) -> None:
        """Change a repo's visibility."""
        with self.write() as db:
            db.execute("UPDATE repos SET private = ? WHERE pk = ?", (int(private), repo.pk))

    # --- which blobs a repo may reference ---------------------------------------------------

    def grant_upload(self, repo_uid: str, sha256: str) -> None:
        """Record that ``sha256`` was uploaded (content and hash checked) through this repo."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM repos WHERE uid = ?", (repo_uid,)).fetchone():
                grants.grant(db, repo_uid, [sha256], "upload")

    def may_reference(self, repo: Repo, author: str, sha256: str) -> bool:
        """Whether a commit by ``author`` to ``repo`` may point at the blob ``sha256``.

        True when the blob came through this repo's own upload, is in one of its commits, or is in
        a commit of a repo ``author`` can read.
        """
        with self.read() as db:
            return grants.may_reference(db, repo.uid, author, sha256)

    # --- trees and history ------------------------------------------------------------------

    def tree(self, commit: Commit) -> dict[str, Entry]:
        """The full file listing of a commit."""
        with self.read() as db:
            row = db.execute("SELECT entries FROM trees WHERE id = ?", (commit.tree,)).fetchone()
        return {path: Entry(*values) for path, values in json.loads(row["entries"]).items()}

    def history(self, repo: Repo, commit: Commit) -> Iterator[Commit]:
        """``commit`` and its ancestors, newest first."""
        current: Commit | None = commit
        with self.read() as db:
            while current is not None:
                yield current
                if current.parent is None:
                    return
                row = db.execute("SELECT * FROM commits WHERE id = ?", (current.parent,)).fetchone()
                current = commit_from_row(row) if row else None

    def last_commits(self, repo: Repo, commit: Commit, paths: list[str]) -> dict[str, Commit]:
        """For each path (file or folder), the newest commit in ``commit``'s history that
        changed it (what the Hub reports as ``lastCommit`` with ``expand=True``)."""
        if not paths:
            return {}
        out: dict[str, Commit] = {}
        pending = set(paths)
        newer: Commit | None = None
        newer_tree: dict[str, Entry] = {}
        for current in self.history(repo, commit):
            tree = self.tree(current)
            if newer is not None:
                for path in list(pending):
                    if _subtree(tree, path) != _subtree(newer_tree, path):
                        out[path] = newer
                        pending.discard(path)
            if not pending:
                return out
            newer, newer_tree = current, tree
        for path in pending:  # unchanged since the first commit
            out[path] = newer
        return out

    # --- renaming --------------------------------------------------------------------------

    def move_repo(self, repo: Repo, namespace: str, name: str, author: str) -> Repo:
        """Rename ``repo`` to ``namespace/name`` (another namespace the author owns, too).

        The repo keeps its ``uid``, history and files; commits in flight land in it under the
        new name. The old name is free afterwards.

        Raises:
            ApiError: 400 bad name or a case twin, 403 the author cannot write both namespaces,
                404 the repo is gone, 409 the target exists.
        """
        check_name(namespace, "namespace")
        check_name(name, "repo name")
        with self.write() as db:
            pk = writable_pk(db, repo, author)
            if not owns(db, author, namespace):
                raise ApiError(403, f"You cannot create repos under the namespace {namespace!r}")
            taken = db.execute(
                "SELECT namespace, name FROM repos WHERE type = ? AND lower(namespace) = lower(?)"
                " AND lower(name) = lower(?) AND pk != ?",
                (repo.type, namespace, name, pk),
            ).fetchone()
            if taken is not None:
                taken_id = f"{taken['namespace']}/{taken['name']}"
                raise ApiError(409, f"Repository {taken_id} already exists")
            db.execute(
                "UPDATE repos SET namespace = ?, name = ? WHERE pk = ?", (namespace, name, pk)
            )
            return repo_from_row(db.execute("SELECT * FROM repos WHERE pk = ?", (pk,)).fetchone())


def _subtree(tree: dict[str, Entry], path: str) -> list[tuple[str, str]]:
    prefix = path + "/"
    return sorted((p, e.oid) for p, e in tree.items() if p == path or p.startswith(prefix))
