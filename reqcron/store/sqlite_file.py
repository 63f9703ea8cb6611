"""The SQLite file of a state: created private and whole, opened in WAL, its schema made.

Errors come out as one sentence (StateError) that says what to do: a
damaged file names ``reqcron state reset``, a directory where nothing can
be created says so (SQLite needs its -wal and -shm files beside the state).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from ..errors import StateError
from ..paths import ensure_private_dir
from .sql import Schema

SCHEMA = Schema(4, """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    next_due REAL,
    anchor REAL,
    enabled INTEGER NOT NULL,
    run_requested REAL,
    signature TEXT,
    first_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_next_due ON tasks (next_due);
CREATE INDEX IF NOT EXISTS tasks_by_request ON tasks (run_requested)
    WHERE run_requested IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    slot REAL, lateness REAL, start REAL, "end" REAL,
    exit_code INTEGER, pid INTEGER,
    output TEXT, return_value TEXT, error TEXT, traceback TEXT,
    lock TEXT,
    slots INTEGER NOT NULL DEFAULT 1,
    call TEXT, attempts INTEGER NOT NULL DEFAULT 0, due REAL, notified TEXT,
    lease REAL
);
CREATE INDEX IF NOT EXISTS runs_by_task ON runs (task, id);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS runs_queued ON runs (due, id) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS calls_by_end ON runs ("end") WHERE call IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalog (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    key TEXT, data TEXT,
    reading_key TEXT, reading_until REAL
);
INSERT OR IGNORE INTO catalog (id, version) VALUES (1, 0)
""", {
    # What brings a state of each older version to the next one.
    1: ["ALTER TABLE tasks DROP COLUMN last_slot"],
    2: ["ALTER TABLE runs ADD COLUMN call TEXT",
        "ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN due REAL",
        "ALTER TABLE runs ADD COLUMN notified TEXT"],
    3: ["ALTER TABLE runs ADD COLUMN lease REAL"],
})


def open_file(path: Path, busy_timeout: float) -> tuple[sqlite3.Connection, tuple[int, int]]:
    """Open the state at ``path``, created private and whole if missing.

    Returns the connection and the file's (device, inode), by which a file
    replaced or deleted under a running server is noticed.
    """
    try:
        ensure_private_dir(path.parent)
        if not path.exists():
            create_file(path)
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        st = os.stat(path)
    except StateError:
        raise  # already one sentence
    except (OSError, sqlite3.Error) as exc:
        raise StateError(str(path), reason(exc, path)) from None
    if st.st_size == 0:
        # A state is only ever put in place whole (create_file), so an
        # empty file was truncated: SQLite would take it for a new, empty
        # database and every position and run would be lost unsaid.
        conn.close()
        raise StateError(str(path), damaged("it is empty (truncated?)"))
    # Switching a new file to WAL answers "locked" at once, without the
    # busy handler, while another process opens it too (gunicorn workers
    # starting together): retry for a while.
    deadline = time.monotonic() + max(busy_timeout, 2.0)
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA.version:
                create_schema(conn)
            return conn, (st.st_dev, st.st_ino)
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not busy(exc) or time.monotonic() > deadline:
                conn.close()
                raise StateError(str(path), reason(exc, path)) from None
            time.sleep(0.01)
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(str(path), reason(exc, path)) from None


def create_file(path: Path) -> None:
    """Put a new, complete state in place atomically (no one ever sees it half made).

    It is built under a temporary name and hard-linked to its place, which
    fails if another process put its own there first: that one is used.
    """
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as exc:  # said without the temporary name: the same every time
        raise StateError(str(path), f"cannot create it in {path.parent}: "
                         f"{exc.strerror or exc}") from None
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            create_schema(conn)
        finally:
            conn.close()  # the last connection: checkpoints and removes the WAL files
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.rename(tmp, path)
    finally:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{tmp}{suffix}")
            except FileNotFoundError:
                pass


def create_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate the schema, under the write lock."""
    # BEGIN IMMEDIATE waits for the write lock (busy timeout); bare DDL
    # could fail at once on a stale read snapshot.
    conn.execute("BEGIN IMMEDIATE")
    try:
        steps = SCHEMA.steps(conn.execute("PRAGMA user_version").fetchone()[0])
    except ValueError as exc:
        conn.execute("ROLLBACK")
        raise sqlite3.DatabaseError(str(exc)) from None
    if steps:
        for statement in steps:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA.version}")
    conn.execute("COMMIT")


def set_aside(path: Path) -> str | None:
    """Rename the state and its WAL files out of the way, keeping them; return where."""
    if not path.exists():
        return None
    stem = f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}"
    aside, n = path.with_name(stem), 1
    while any(os.path.lexists(f"{aside}{s}") for s in ("", "-wal", "-shm")):
        n += 1  # a second reset within the second keeps the first one's files
        aside = path.with_name(f"{stem}-{n}")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(str(path), f"cannot set it aside as {aside}{suffix}: "
                             f"{exc.strerror or exc}") from None
    return str(aside)


def busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def reason(exc: BaseException, path: Path | None = None) -> str:
    text = str(exc) or type(exc).__name__
    if "not a database" in text or "malformed" in text:
        return damaged(text)
    if "unable to open" in text and path is not None:
        why = _cannot_write_beside(path)
        if why:
            return f"{text}: {why}"
    return text


def damaged(text: str) -> str:
    return (f"{text}; the file is damaged: `reqcron state reset DOCROOT` sets it aside "
            "and starts a fresh state")


def _cannot_write_beside(path: Path) -> str | None:
    """Why no file can be made beside ``path`` (SQLite needs its -wal and -shm), or None.

    Tried for real, not with os.access: the answer must hold for root too
    (a read-only mount, the immutable attribute).
    """
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        return (f"no file can be created in {path.parent} ({exc.strerror or exc}), "
                f"and SQLite needs to create {path.name}-wal and {path.name}-shm there")
    os.unlink(probe)
    return None
