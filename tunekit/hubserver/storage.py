"""Hub metadata in SQLite: accounts, tokens, repos, branches, commits and tree snapshots.

Every commit stores a full snapshot of its tree (path → sha256, size, lfs flag, git oid),
deduplicated by content, so any revision resolves with one lookup and history is never rewritten.
Writes run in ``BEGIN IMMEDIATE`` transactions: SQLite serialises them across threads *and*
processes, so two pushes to one branch can never both build on the same parent and lose each
other's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import ApiError, bad_request, entry_not_found, revision_not_found
from .validate import check_account_name, check_branch, check_name, is_commit_id

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

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
            cur = db.execute(
                "INSERT INTO repos (type, namespace, name, private, sdk, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (rtype, namespace, name, int(private), sdk, now_iso()),
            )
            repo_pk = cur.lastrowid
            self._insert_commit(
                db, repo_pk, DEFAULT_BRANCH, None, dict(initial_files), "initial commit", "", author
            )
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
            db.execute("DELETE FROM refs WHERE repo = ?", (repo.pk,))
            db.execute("DELETE FROM commits WHERE repo = ?", (repo.pk,))
            db.execute("DELETE FROM repos WHERE pk = ?", (repo.pk,))

    def set_private(self, repo: Repo, private: bool) -> None:
        """Change a repo's visibility."""
        with self._write() as db:
            db.execute("UPDATE repos SET private = ? WHERE pk = ?", (int(private), repo.pk))

    # --- revisions ------------------------------------------------------------------------

    def branches(self, repo: Repo) -> dict[str, str]:
        """Branch name → head commit id."""
        with self._read() as db:
            rows = db.execute(
                "SELECT name, commit_id FROM refs WHERE repo = ? ORDER BY name", (repo.pk,)
            )
            return {r["name"]: r["commit_id"] for r in rows}

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """The commit a branch name or a full commit id of this repo points to.

        Raises:
            ApiError: 404 ``RevisionNotFound``.
        """
        with self._read() as db:
            row = db.execute(
                "SELECT commit_id FROM refs WHERE repo = ? AND name = ?", (repo.pk, revision)
            ).fetchone()
            commit_id = row["commit_id"] if row else (revision if is_commit_id(revision) else None)
            found = (
                commit_id
                and db.execute(
                    "SELECT * FROM commits WHERE id = ? AND repo = ?", (commit_id, repo.pk)
                ).fetchone()
            )
        if not found:
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

    def create_branch(self, repo: Repo, branch: str, start: Commit) -> None:
        """Point a new branch at ``start``.

        Raises:
            ApiError: 409 if the branch exists.
        """
        check_branch(branch)
        with self._write() as db:
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
            ApiError: 404 ``RevisionNotFound`` (no such branch), 404 ``EntryNotFound`` (deleting a
                missing file or folder), 412 (``parent_commit`` is not the head).
        """
        with self._write() as db:
            row = db.execute(
                "SELECT commit_id FROM refs WHERE repo = ? AND name = ?", (repo.pk, branch)
            ).fetchone()
            if row is None:
                raise revision_not_found(branch)
            head = row["commit_id"]
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
            return self._insert_commit(db, repo.pk, branch, head, tree, title, message, author)

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
