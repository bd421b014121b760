"""The hub's SQLite file: its schema, migrations, owner-only permissions and transactions.

Writes run in ``BEGIN IMMEDIATE`` transactions: SQLite serialises them across threads *and*
processes, so two pushes to one branch can never both build on the same parent and lose each
other's files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .grants import backfill_grants
from .records import Repo

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


def now_iso() -> str:
    """Current UTC time in the Hub's format (``2024-05-01T12:00:00.123Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Database:
    """The metadata file of one hub data dir. Safe to share between threads: each call opens its
    own connection (cheap for SQLite), so no connection is ever used by two threads.

    The stores (:class:`.accounts.AccountStore`, :class:`.refs.RefStore`,
    :class:`.storage.HubStore`) build on it through :meth:`read` and :meth:`write`.
    """

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "hub.sqlite"
        private_dir(self.path.parent)
        _private_file(self.path)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            had_grants = _has_table(db, "repo_blobs")
            db.executescript(SCHEMA)
            _migrate(db, backfill=not had_grants)
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
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reading, closed on exit."""
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding SQLite's write lock from its first statement to the commit;
        rolled back if the block raises."""
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


def delete_repo_rows(db: sqlite3.Connection, repo: Repo) -> None:
    """Delete every row of ``repo`` (refs, tags, commits, grants, the repo), inside the caller's
    write transaction. Trees and blobs stay: they may be shared with other repos."""
    for table in ("refs", "tags", "commits"):
        db.execute(f"DELETE FROM {table} WHERE repo = ?", (repo.pk,))
    db.execute("DELETE FROM repo_blobs WHERE repo_uid = ?", (repo.uid,))
    db.execute("DELETE FROM repos WHERE pk = ?", (repo.pk,))


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


def _migrate(db: sqlite3.Connection, *, backfill: bool) -> None:
    """Bring a data dir made by an older tunekit up to this schema."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(repos)")}
    db.execute("BEGIN IMMEDIATE")
    try:
        if "uid" not in columns:
            db.execute("ALTER TABLE repos ADD COLUMN uid TEXT")
        for row in db.execute("SELECT pk FROM repos WHERE uid IS NULL").fetchall():
            db.execute("UPDATE repos SET uid = ? WHERE pk = ?", (uuid.uuid4().hex, row["pk"]))
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS repos_by_uid ON repos (uid)")
        if backfill:
            backfill_grants(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
