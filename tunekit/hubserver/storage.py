"""Hub metadata in SQLite: accounts, tokens, repos, branches, commits and tree snapshots.

Every commit stores a full snapshot of its tree (path → sha256, size, lfs flag, git oid),
deduplicated by content, so any revision resolves with one lookup and history is never rewritten.
Writes run in ``BEGIN IMMEDIATE`` transactions: SQLite serialises them across threads *and*
processes, so two pushes to one branch can never both build on the same parent and lose each
other's files.

Each repo has a random ``uid`` besides its row id. SQLite hands a deleted repo's row id to the next
repo created, so anything that outlives a request (a commit in flight, an upload grant, a signed
upload URL) names the repo by ``uid``, never by row id.

Tokens are stored as their sha256 only. A token's *id* is the first :data:`TOKEN_ID_CHARS`
characters of that hash: enough to name it when revoking, useless to sign in with.

Which blobs a repo may reference is recorded in ``repo_blobs``: those uploaded through the repo's
own LFS endpoint (``source = 'upload'``) and those in one of its commits (``source = 'tree'``). A
commit may point at a blob only through such a row of its own repo or a ``tree`` row of a repo the
author can read, so a sha256 alone never opens another tenant's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import ApiError, bad_request, entry_not_found, repo_not_found, revision_not_found
from .validate import check_account_name, check_branch, check_name, is_commit_id, is_short_commit_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('user', 'org')),
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    org TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (org, user));
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repos (
    pk INTEGER PRIMARY KEY, type TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    private INTEGER NOT NULL, sdk TEXT, created_at TEXT NOT NULL,
    UNIQUE (type, namespace, name));
CREATE TABLE IF NOT EXISTS refs (
    repo INTEGER NOT NULL, name TEXT NOT NULL, commit_id TEXT NOT NULL, PRIMARY KEY (repo, name));
CREATE TABLE IF NOT EXISTS commits (
    id TEXT PRIMARY KEY, repo INTEGER NOT NULL, parent TEXT, title TEXT NOT NULL,
    message TEXT NOT NULL, author TEXT NOT NULL, date TEXT NOT NULL, tree TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS commits_by_repo ON commits (repo);
CREATE TABLE IF NOT EXISTS trees (id TEXT PRIMARY KEY, entries TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repo_blobs (
    repo_uid TEXT NOT NULL, sha256 TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('upload', 'tree')),
    PRIMARY KEY (repo_uid, sha256, source));
CREATE INDEX IF NOT EXISTS repo_blobs_by_sha ON repo_blobs (sha256);
CREATE TABLE IF NOT EXISTS tags (
    repo INTEGER NOT NULL, name TEXT NOT NULL, commit_id TEXT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (repo, name));
"""

# What a new repo starts with, as on huggingface.co: one commit holding a .gitattributes that
# marks the usual binary formats as LFS. The preupload endpoint applies the same patterns.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model"
    " *.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar"
    " *.safetensors *.tar *.tar.* *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
DEFAULT_BRANCH = "main"
#: Length of a token's id (a prefix of its stored sha256), shown by ``tunekit hub token list``.
TOKEN_ID_CHARS = 12


def now_iso() -> str:
    """Current UTC time in the Hub's format (``2024-05-01T12:00:00.123Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hash_token(token: str) -> str:
    """Tokens are stored as their sha256 only; a leaked database gives no usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


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


def _repo(row: sqlite3.Row) -> Repo:
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


def _commit(row: sqlite3.Row) -> Commit:
    return Commit(
        row["id"],
        row["parent"],
        row["title"],
        row["message"],
        row["author"],
        row["date"],
        row["tree"],
    )


def _new_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


class HubStore:
    """All metadata of one hub data dir. Safe to share between threads: each call opens its own
    connection (cheap for SQLite), so no connection is ever used by two threads."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "hub.sqlite"
        private_dir(self.path.parent)
        _private_file(self.path)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            had_grants = _has_table(db, "repo_blobs")
            db.executescript(SCHEMA)
            _migrate(db, backfill_grants=not had_grants)
        finally:
            db.close()
        # SQLite gives the -wal and -shm files the database's mode; older data dirs need fixing.
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding SQLite's write lock from its first statement to the commit."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # --- accounts -------------------------------------------------------------------------

    def add_user(self, name: str) -> str:
        """Create user ``name`` if needed and issue a new token for it.

        Returns:
            The token, in clear; only its hash is kept.

        Raises:
            ApiError: 400 for a bad name, 409 if ``name`` is an org.
        """
        check_account_name(name, "user name")
        token = _new_token()
        with self._write() as db:
            _refuse_case_twin(db, name)
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO accounts VALUES (?, 'user', ?)", (name, now_iso()))
            elif row["kind"] != "user":
                raise ApiError(409, f"{name!r} is an organization, not a user")
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), name, now_iso()))
        return token

    def add_org(self, name: str, members: list[str]) -> None:
        """Create org ``name`` if needed and add existing users to it.

        Raises:
            ApiError: 400 for a bad name or an unknown member, 409 if ``name`` is a user.
        """
        check_account_name(name, "organization name")
        with self._write() as db:
            _refuse_case_twin(db, name)
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO accounts VALUES (?, 'org', ?)", (name, now_iso()))
            elif row["kind"] != "org":
                raise ApiError(409, f"{name!r} is a user, not an organization")
            for user in members:
                kind = db.execute("SELECT kind FROM accounts WHERE name = ?", (user,)).fetchone()
                if kind is None or kind["kind"] != "user":
                    raise bad_request(f"Unknown user {user!r}: add it first")
                db.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (name, user))

    def list_tokens(self, user: str) -> list[tuple[str, str]]:
        """``(token id, created_at)`` of each token of ``user``, oldest first.

        Raises:
            ApiError: 404 when ``user`` is not a user.
        """
        with self._read() as db:
            _require_user(db, user)
            rows = db.execute(
                "SELECT token_hash, created_at FROM tokens WHERE user = ? ORDER BY created_at",
                (user,),
            )
            return [(r["token_hash"][:TOKEN_ID_CHARS], r["created_at"]) for r in rows]

    def revoke_token(self, token_or_id: str) -> str:
        """Delete one token, given in clear or by its id (``list_tokens``); it is refused (401)
        from the next request on, since every request looks its token up here.

        Returns:
            The user the token belonged to.

        Raises:
            ApiError: 404 when no token matches (or an id matches several).
        """
        with self._write() as db:
            row = db.execute(
                "SELECT token_hash, user FROM tokens WHERE token_hash = ?",
                (hash_token(token_or_id),),
            ).fetchone()
            if row is None and len(token_or_id) == TOKEN_ID_CHARS:
                rows = db.execute(
                    "SELECT token_hash, user FROM tokens WHERE substr(token_hash, 1, ?) = ?",
                    (TOKEN_ID_CHARS, token_or_id.lower()),
                ).fetchall()
                row = rows[0] if len(rows) == 1 else None
            if row is None:
                raise ApiError(
                    404,
                    "No such token: pass the token itself or its id from `tunekit hub token list`",
                )
            db.execute("DELETE FROM tokens WHERE token_hash = ?", (row["token_hash"],))
            return row["user"]

    def rotate_tokens(self, user: str) -> str:
        """Revoke every token of ``user`` and issue one new token, in one transaction.

        Returns:
            The new token, in clear.

        Raises:
            ApiError: 404 when ``user`` is not a user.
        """
        token = _new_token()
        with self._write() as db:
            _require_user(db, user)
            db.execute("DELETE FROM tokens WHERE user = ?", (user,))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (hash_token(token), user, now_iso()))
        return token

    def remove_user(self, name: str, *, delete_repos: bool = False) -> list[str]:
        """Delete user ``name``: their tokens (refused at once), org memberships and account.

        A user who still owns repos is kept unless ``delete_repos``: a user created later under
        the same name would otherwise inherit the private repos.

        Returns:
            The ids of the repos deleted with the user.

        Raises:
            ApiError: 404 when ``name`` is not a user, 409 when they own repos and
                ``delete_repos`` is false.
        """
        with self._write() as db:
            _require_user(db, name)
            rows = db.execute("SELECT * FROM repos WHERE namespace = ?", (name,))
            repos = [_repo(r) for r in rows]
            if repos and not delete_repos:
                listed = ", ".join(sorted(f"{r.type} {r.repo_id}" for r in repos))
                raise ApiError(
                    409,
                    f"User {name!r} still owns {len(repos)} repo(s) ({listed}): move or delete them"
                    " first, or pass --delete-repos",
                )
            for repo in repos:
                _delete_repo_rows(db, repo)
            db.execute("DELETE FROM tokens WHERE user = ?", (name,))
            db.execute("DELETE FROM members WHERE user = ?", (name,))
            db.execute("DELETE FROM accounts WHERE name = ?", (name,))
        return [r.repo_id for r in repos]

    def remove_member(self, org: str, user: str) -> None:
        """Take ``user`` out of ``org``: from the next request on they can neither read the
        org's private repos nor write any of its repos (a commit in flight is refused too).

        Raises:
            ApiError: 404 when ``user`` is not a member of ``org``.
        """
        with self._write() as db:
            cur = db.execute("DELETE FROM members WHERE org = ? AND user = ?", (org, user))
            if cur.rowcount == 0:
                raise ApiError(404, f"{user!r} is not a member of organization {org!r}")

    def user_for_token(self, token: str) -> str | None:
        """The user a token belongs to, or ``None`` for an unknown token."""
        with self._read() as db:
            row = db.execute(
                "SELECT user FROM tokens WHERE token_hash = ?", (hash_token(token),)
            ).fetchone()
        return row["user"] if row else None

    def orgs_of(self, user: str) -> list[str]:
        """Names of the orgs ``user`` belongs to."""
        with self._read() as db:
            rows = db.execute("SELECT org FROM members WHERE user = ? ORDER BY org", (user,))
            return [r["org"] for r in rows]

    def account_kind(self, name: str) -> str | None:
        """``"user"``, ``"org"`` or ``None`` when no such account exists."""
        with self._read() as db:
            row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
        return row["kind"] if row else None

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
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM repos WHERE type = ? AND namespace = ? AND name = ?",
                (rtype, namespace, name),
            ).fetchone()
            if row is not None:
                return _repo(row), False
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
            self._insert_commit(
                db, repo_pk, DEFAULT_BRANCH, None, dict(initial_files), "initial commit", "", author
            )
            _grant(db, uid, (e.sha256 for e in initial_files.values()), "tree")
            row = db.execute("SELECT * FROM repos WHERE pk = ?", (repo_pk,)).fetchone()
        return _repo(row), True

    def get_repo(self, rtype: str, namespace: str, name: str) -> Repo | None:
        """The repo, or ``None``."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM repos WHERE type = ? AND namespace = ? AND name = ?",
                (rtype, namespace, name),
            ).fetchone()
        return _repo(row) if row else None

    def list_repos(self, rtype: str, author: str | None = None) -> list[Repo]:
        """All repos of a type (optionally of one namespace), newest first."""
        sql, args = "SELECT * FROM repos WHERE type = ?", [rtype]
        if author:
            sql += " AND namespace = ?"
            args.append(author)
        with self._read() as db:
            return [_repo(r) for r in db.execute(sql + " ORDER BY pk DESC", args)]

    def delete_repo(self, repo: Repo) -> None:
        """Forget a repo and its history. Blobs stay: they may be shared with other repos."""
        with self._write() as db:
            _delete_repo_rows(db, repo)

    def set_private(self, repo: Repo, private: bool) -> None:
        """Change a repo's visibility."""
        with self._write() as db:
            db.execute("UPDATE repos SET private = ? WHERE pk = ?", (int(private), repo.pk))

    # --- which blobs a repo may reference ---------------------------------------------------

    def grant_upload(self, repo_uid: str, sha256: str) -> None:
        """Record that ``sha256`` was uploaded (content and hash checked) through this repo."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM repos WHERE uid = ?", (repo_uid,)).fetchone():
                _grant(db, repo_uid, [sha256], "upload")

    def may_reference(self, repo: Repo, author: str, sha256: str) -> bool:
        """Whether a commit by ``author`` to ``repo`` may point at the blob ``sha256``.

        True when the blob came through this repo's own upload, is in one of its commits, or is in
        a commit of a repo ``author`` can read.
        """
        with self._read() as db:
            return _may_reference(db, repo.uid, author, sha256)

    # --- revisions ------------------------------------------------------------------------

    def branches(self, repo: Repo) -> dict[str, str]:
        """Branch name → head commit id."""
        with self._read() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM refs WHERE repo = ? ORDER BY name", (repo.pk,)
            )
            return {r["name"]: r["commit_id"] for r in rows}

    def tags(self, repo: Repo) -> dict[str, str]:
        """Tag name → commit id."""
        with self._read() as db:
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
        with self._read() as db:
            found = _resolve(db, repo.pk, revision)
        if found is None:
            raise revision_not_found(revision)
        return _commit(found)

    def tree(self, commit: Commit) -> dict[str, Entry]:
        """The full file listing of a commit."""
        with self._read() as db:
            row = db.execute("SELECT entries FROM trees WHERE id = ?", (commit.tree,)).fetchone()
        return {path: Entry(*values) for path, values in json.loads(row["entries"]).items()}

    def history(self, repo: Repo, commit: Commit) -> Iterator[Commit]:
        """``commit`` and its ancestors, newest first."""
        current: Commit | None = commit
        with self._read() as db:
            while current is not None:
                yield current
                if current.parent is None:
                    return
                row = db.execute("SELECT * FROM commits WHERE id = ?", (current.parent,)).fetchone()
                current = _commit(row) if row else None

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

    def create_branch(self, repo: Repo, branch: str, start: Commit) -> None:
        """Point a new branch at ``start``.

        Raises:
            ApiError: 409 if the branch (or a tag of that name) exists.
        """
        check_branch(branch)
        with self._write() as db:
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
        with self._write() as db:
            cur = db.execute("DELETE FROM refs WHERE repo = ? AND name = ?", (repo.pk, branch))
            if cur.rowcount == 0:
                raise revision_not_found(branch)

    def create_tag(self, repo: Repo, tag: str, target: Commit, message: str = "") -> None:
        """Tag ``target``. Tags do not move; delete and create again to retarget.

        Raises:
            ApiError: 400 for a bad name, 409 if the tag (or a branch of that name) exists.
        """
        check_branch(tag, "tag")
        with self._write() as db:
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
        with self._write() as db:
            cur = db.execute("DELETE FROM tags WHERE repo = ? AND name = ?", (repo.pk, tag))
            if cur.rowcount == 0:
                raise revision_not_found(tag)

    # --- renaming and squashing -------------------------------------------------------------

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
        with self._write() as db:
            pk = _writable_pk(db, repo, author)
            if not _owns(db, author, namespace):
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
            return _repo(db.execute("SELECT * FROM repos WHERE pk = ?", (pk,)).fetchone())

    def super_squash(self, repo: Repo, branch: str, message: str, author: str) -> str:
        """Replace the history of ``branch`` by one commit holding its current files.

        Commits no other branch or tag reaches are deleted, so their files can no longer be read
        from this repo by commit id (they stay in other repos that hold the same content).

        Returns:
            The new commit id.
        """
        with self._write() as db:
            pk = _writable_pk(db, repo, author)
            row = db.execute(
                "SELECT commit_id FROM refs WHERE repo = ? AND name = ?", (pk, branch)
            ).fetchone()
            if row is None:
                raise revision_not_found(branch)
            tree_id = db.execute(
                "SELECT tree FROM commits WHERE id = ?", (row["commit_id"],)
            ).fetchone()["tree"]
            row = db.execute("SELECT entries FROM trees WHERE id = ?", (tree_id,)).fetchone()
            tree = {path: Entry(*values) for path, values in json.loads(row["entries"]).items()}
            commit_id = self._insert_commit(db, pk, branch, None, tree, message, "", author)
            _drop_unreachable(db, pk, repo.uid)
            return commit_id

    # --- commits --------------------------------------------------------------------------

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
        with self._write() as db:
            # Checked again here, under the write lock: the request may have been authorised
            # long ago (a slow upload), and the repo deleted or its access changed since.
            repo_pk = _writable_pk(db, repo, author)
            for op in operations:
                if isinstance(op, AddFile) and op.entry.lfs:
                    if not _may_reference(db, repo.uid, author, op.entry.sha256):
                        raise not_uploaded(op.path, op.entry.sha256)
            row = db.execute(
                "SELECT commit_id FROM refs WHERE repo = ? AND name = ?", (repo_pk, branch)
            ).fetchone()
            if row is None:
                raise revision_not_found(branch)
            head = row["commit_id"]
            if parent_commit is not None and len(parent_commit) < 40:
                # A short id (7+ hex) stands for the one commit of this repo it begins.
                match = _commit_by_prefix(db, repo_pk, parent_commit)
                parent_commit = match["id"] if match is not None else parent_commit
            if parent_commit is not None and parent_commit != head:
                raise ApiError(
                    412,
                    f"A commit has happened since {parent_commit} (head of {branch} is now {head})."
                    " Please refresh and try again.",
                )
            tree_id = db.execute("SELECT tree FROM commits WHERE id = ?", (head,)).fetchone()[
                "tree"
            ]
            entries = json.loads(
                db.execute("SELECT entries FROM trees WHERE id = ?", (tree_id,)).fetchone()[
                    "entries"
                ]
            )
            tree = {path: Entry(*values) for path, values in entries.items()}
            _apply(tree, operations)
            added = (op.entry.sha256 for op in operations if isinstance(op, AddFile))
            _grant(db, repo.uid, added, "tree")
            return self._insert_commit(db, repo_pk, branch, head, tree, title, message, author)

    @staticmethod
    def _insert_commit(
        db: sqlite3.Connection,
        repo_pk: int,
        branch: str,
        parent: str | None,
        tree: dict[str, Entry],
        title: str,
        message: str,
        author: str,
    ) -> str:
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


def not_uploaded(path: str, sha256: str) -> ApiError:
    """The one answer for an LFS oid a commit may not use, whether or not the server stores it
    (any other wording would tell a stranger which files exist)."""
    return bad_request(
        f"{path}: LFS object {sha256} was not uploaded to this repo; upload it before committing"
    )


def private_dir(path: Path, *, levels: int = 1) -> None:
    """Create ``path`` (and parents) if needed; it and the ``levels - 1`` folders above it are made
    readable by their owner only (``mkdir`` applies its mode to the last folder alone)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in [path, *path.parents][:levels]:
        os.chmod(folder, 0o700)


def _private_file(path: Path) -> None:
    # Created before SQLite opens it, so the file is never world-readable, not even briefly.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _migrate(db: sqlite3.Connection, *, backfill_grants: bool) -> None:
    """Bring a data dir made by an older tunekit up to this schema."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(repos)")}
    db.execute("BEGIN IMMEDIATE")
    try:
        if "uid" not in columns:
            db.execute("ALTER TABLE repos ADD COLUMN uid TEXT")
        for row in db.execute("SELECT pk FROM repos WHERE uid IS NULL").fetchall():
            db.execute("UPDATE repos SET uid = ? WHERE pk = ?", (uuid.uuid4().hex, row["pk"]))
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS repos_by_uid ON repos (uid)")
        if backfill_grants:
            _backfill_grants(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _backfill_grants(db: sqlite3.Connection) -> None:
    # Every blob already in a repo's history stays usable by that repo.
    rows = db.execute(
        "SELECT DISTINCT repos.uid AS uid, trees.entries AS entries FROM commits"
        " JOIN repos ON repos.pk = commits.repo JOIN trees ON trees.id = commits.tree"
    ).fetchall()
    for row in rows:
        _grant(db, row["uid"], (v[0] for v in json.loads(row["entries"]).values()), "tree")


def _grant(db: sqlite3.Connection, repo_uid: str, shas, source: str) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO repo_blobs VALUES (?, ?, ?)",
        [(repo_uid, sha, source) for sha in set(shas)],
    )


def _may_reference(db: sqlite3.Connection, repo_uid: str, author: str, sha256: str) -> bool:
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


def _writable_pk(db: sqlite3.Connection, repo: Repo, author: str) -> int:
    """The row id of ``repo`` now, if it still exists and ``author`` may still write it."""
    row = db.execute("SELECT pk, namespace FROM repos WHERE uid = ?", (repo.uid,)).fetchone()
    if row is None:
        raise repo_not_found(repo.repo_id)
    namespace = row["namespace"]
    is_user = db.execute(
        "SELECT 1 FROM accounts WHERE name = ? AND kind = 'user'", (author,)
    ).fetchone()
    member = db.execute(
        "SELECT 1 FROM members WHERE org = ? AND user = ?", (namespace, author)
    ).fetchone()
    if not is_user or (namespace != author and not member):
        raise ApiError(403, f"You don't have write access to {repo.repo_id}")
    return row["pk"]


def _delete_repo_rows(db: sqlite3.Connection, repo: Repo) -> None:
    for table in ("refs", "tags", "commits"):
        db.execute(f"DELETE FROM {table} WHERE repo = ?", (repo.pk,))
    db.execute("DELETE FROM repo_blobs WHERE repo_uid = ?", (repo.uid,))
    db.execute("DELETE FROM repos WHERE pk = ?", (repo.pk,))


def _require_user(db: sqlite3.Connection, name: str) -> None:
    row = db.execute("SELECT kind FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None or row["kind"] != "user":
        raise ApiError(404, f"No user {name!r} on this hub")


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
        return _commit_by_prefix(db, repo_pk, revision)
    return None


def _commit_by_prefix(db: sqlite3.Connection, repo_pk: int, prefix: str) -> sqlite3.Row | None:
    """The commit of the repo whose id starts with ``prefix`` (hex only, so LIKE is safe)."""
    rows = db.execute(
        "SELECT * FROM commits WHERE repo = ? AND id LIKE ? LIMIT 2",
        (repo_pk, prefix.lower() + "%"),
    ).fetchall()
    if len(rows) > 1:
        raise bad_request(f"Ambiguous short commit id {prefix!r}: give more of its hex digits")
    return rows[0] if rows else None


def _subtree(tree: dict[str, Entry], path: str) -> list[tuple[str, str]]:
    prefix = path + "/"
    return sorted((p, e.oid) for p, e in tree.items() if p == path or p.startswith(prefix))


def _owns(db: sqlite3.Connection, user: str, namespace: str) -> bool:
    if namespace == user:
        return True
    member = db.execute(
        "SELECT 1 FROM members WHERE org = ? AND user = ?", (namespace, user)
    ).fetchone()
    return member is not None


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
        _grant(db, repo_uid, (v[0] for v in json.loads(row["entries"]).values()), "tree")


def _refuse_case_twin(db: sqlite3.Connection, name: str) -> None:
    twin = db.execute(
        "SELECT name FROM accounts WHERE lower(name) = lower(?) AND name != ?", (name, name)
    ).fetchone()
    if twin is not None:
        raise bad_request(
            f"Invalid name {name!r}: account {twin['name']!r} exists and differs only in letter"
            " case; choose another name"
        )


def _apply(tree: dict[str, Entry], operations: list[Operation]) -> None:
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
