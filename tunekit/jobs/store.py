"""The jobs' state in one SQLite file: uploaded files, jobs (the queue is the jobs in status
``queued``), their events and checkpoints.

One connection per call, so the server's threads and the runner share the file safely; WAL mode
lets readers go on while a writer commits.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    created_at INTEGER NOT NULL, status TEXT NOT NULL, request TEXT NOT NULL,
    fine_tuned_model TEXT, finished_at INTEGER, trained_tokens INTEGER, estimated_finish INTEGER,
    error TEXT, result_files TEXT NOT NULL DEFAULT '[]', attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0, deleted_model INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL, model TEXT NOT NULL,
    folder TEXT NOT NULL, UNIQUE (job_id, step));
"""

# Every status a job passes through, in OpenAI's words; the last three are final.
STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``file-…``, ``ftjob-…``, ``ftevent-…``, ``ftckpt-…``."""
    return f"{prefix}-{secrets.token_hex(12)}"


class Store:
    """The SQLite file ``path``: created with its tables on first use.

    Args:
        path: the database file (its folder is created).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = threading.Lock()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:  # commits, or rolls back on an exception
                yield db
        finally:
            db.close()

    # -- files ---------------------------------------------------------------------------------
    def add_file(self, *, owner: str, purpose: str, filename: str, size: int, sha256: str) -> dict:
        row = dict(id=new_id("file"), owner=owner, purpose=purpose, filename=filename, bytes=size,
                   sha256=sha256, created_at=int(time.time()))
        with self._write, self._db() as db:
            db.execute("INSERT INTO files (id, owner, purpose, filename, bytes, sha256, created_at) "
                       "VALUES (:id, :owner, :purpose, :filename, :bytes, :sha256, :created_at)", row)
        return row

    def file(self, file_id: str, owner: str | None) -> dict | None:
        """The file's row, or None when it does not exist or belongs to another owner."""
        with self._db() as db:
            row = db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return dict(row) if row is not None and (owner is None or row["owner"] == owner) else None

    def files(self, owner: str | None, *, purpose: str | None = None) -> list[dict]:
        """The owner's files (everyone's for None), oldest first."""
        query, args = "SELECT * FROM files WHERE 1=1", []
        if owner is not None:
            query, args = query + " AND owner = ?", [*args, owner]
        if purpose is not None:
            query, args = query + " AND purpose = ?", [*args, purpose]
        with self._db() as db:
            return [dict(r) for r in db.execute(query + " ORDER BY seq", args)]

    def delete_file(self, file_id: str) -> int:
        """Forget a file; returns how many files still use its content."""
        with self._write, self._db() as db:
            row = db.execute("SELECT sha256 FROM files WHERE id = ?", (file_id,)).fetchone()
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            if row is None:
                return 0
            return db.execute("SELECT COUNT(*) FROM files WHERE sha256 = ?", (row["sha256"],)).fetchone()[0]

    # -- jobs ----------------------------------------------------------------------------------
    def add_job(self, *, owner: str, request: dict) -> dict:
        job_id = new_id("ftjob")
        with self._write, self._db() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, status, request) VALUES (?, ?, ?, ?, ?)",
                       (job_id, owner, int(time.time()), "validating_files", json.dumps(request)))
        return self.job(job_id, None)

    def job(self, job_id: str, owner: str | None) -> dict | None:
        """The job (``request``, ``error``, ``result_files`` parsed), or None when it does not
        exist or belongs to another owner."""
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        return _job(row)

    def jobs(self, owner: str | None = None, *, status: str | None = None) -> list[dict]:
        """Jobs, oldest first: the owner's (everyone's for None), those in ``status`` only if given."""
        query, args = "SELECT * FROM jobs WHERE 1=1", []
        if owner is not None:
            query, args = query + " AND owner = ?", [*args, owner]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._db() as db:
            return [_job(r) for r in db.execute(query + " ORDER BY seq", args)]

    def update_job(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set fields of a job (JSON-encoding ``request``, ``error``, ``result_files``).

        Args:
            only_if: change it only while its status is one of these (so a cancel and a finish
                racing each other cannot both win).

        Returns:
            Whether the job was changed.
        """
        encoded = {k: (json.dumps(v) if k in ("request", "error", "result_files") and v is not None else v)
                   for k, v in fields.items()}
        sets = ", ".join(f"{k} = :{k}" for k in encoded)
        query = f"UPDATE jobs SET {sets} WHERE id = :job_id"
        if only_if:
            query += " AND status IN (" + ", ".join(f"'{s}'" for s in only_if) + ")"
        with self._write, self._db() as db:
            return db.execute(query, {**encoded, "job_id": job_id}).rowcount > 0

    # -- events and checkpoints ----------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        with self._write, self._db() as db:
            db.execute("INSERT INTO events (id, job_id, created_at, level, message, type, data) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (new_id("ftevent"), job_id, int(time.time()), level, message, type,
                        json.dumps(data) if data is not None else None))

    def events(self, job_id: str) -> list[dict]:
        """The job's events, newest first (as OpenAI lists them)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM events WHERE job_id = ? ORDER BY seq DESC", (job_id,)).fetchall()
        return [{**dict(r), "data": json.loads(r["data"]) if r["data"] else None} for r in rows]

    def add_checkpoint(self, job_id: str, *, step: int, metrics: dict, model: str, folder: str) -> bool:
        """Record a checkpoint once; returns False when the job already has one at ``step``."""
        with self._write, self._db() as db:
            cursor = db.execute("INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics, model, "
                                "folder) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (new_id("ftckpt"), job_id, int(time.time()), step, json.dumps(metrics), model, folder))
            return cursor.rowcount > 0

    def checkpoints(self, job_id: str | None = None) -> list[dict]:
        """Checkpoints, newest first: one job's, or every job's for None."""
        query, args = "SELECT * FROM checkpoints", ()
        if job_id is not None:
            query, args = query + " WHERE job_id = ?", (job_id,)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY seq DESC", args).fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        with self._write, self._db() as db:
            db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))


def _job(row: sqlite3.Row) -> dict:
    job = dict(row)
    job["request"] = json.loads(job["request"])
    job["error"] = json.loads(job["error"]) if job["error"] else None
    job["result_files"] = json.loads(job["result_files"] or "[]")
    return job


def page(items: list[dict], *, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """OpenAI's cursor pagination: the ``limit`` items after the one whose id is ``after``
    (from the start when None or unknown), and whether more follow."""
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return items[:limit], len(items) > limit
