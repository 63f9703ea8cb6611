"""The state store: schedule positions, atomic claims, enable flags, run-now requests, history.

``Store`` is the interface the engine talks to; ``SQLiteStore`` is the
implementation for one host.  A backend for several hosts (PostgreSQL)
implements the same methods and inherits the same test suite.

Times are UTC epoch seconds (floats) throughout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from .errors import StateError
from .records import Record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

OUTPUT_LIMIT = 64 * 1024  # characters of a run's output kept in the history


class Status(StrEnum):
    """What became of a run, or of a slot that did not run."""

    PENDING = "pending"  # claimed, its process not started yet
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # not run: disabled, or the previous run still going
    MISSED = "missed"  # found later than the task's grace
    LOST = "lost"  # its process died without recording an end

    @property
    def finished(self) -> bool:
        return self not in (Status.PENDING, Status.RUNNING)


class Trigger(StrEnum):
    """What started a run."""

    REQUEST = "request"  # the middleware, on an HTTP request
    DUE = "due"  # `reqcron due`
    CRON = "cron"  # `runtask` that found its slot due
    MANUAL = "manual"  # `runtask` / `reqcron run` outside any slot
    RUN_NOW = "run_now"  # Docroot.run_now / the status page


class TaskState(Record):
    """A task's row in the store."""

    __slots__ = (
        "name",
        "next_due",
        "anchor",
        "enabled",
        "run_requested",
        "signature",
        "last_slot",
        "first_seen",
    )

    def __init__(
        self,
        name: str,
        next_due: float | None,
        anchor: float | None,
        enabled: bool,
        run_requested: float | None,
        signature: str | None,
        last_slot: float | None,
        first_seen: float,
    ):
        self.name = name
        self.next_due = next_due  # the first slot not yet claimed
        self.anchor = anchor  # what `every` without an anchor counts from
        self.enabled = enabled
        self.run_requested = run_requested  # when run_now() asked, until claimed
        self.signature = signature  # the schedule next_due was computed for
        self.last_slot = last_slot
        self.first_seen = first_seen


_RUN_COLUMNS = (
    "task",
    "trigger",
    "status",
    "created",
    "slot",
    "lateness",
    "start",
    "end",
    "exit_code",
    "pid",
    "output",
    "return_value",
    "error",
    "traceback",
    "lock",
    "slots",
)


class Run(Record):
    """One row of the history: a run, or a slot that did not run and why."""

    __slots__ = ("id", *_RUN_COLUMNS)

    def __init__(
        self,
        task: str,
        trigger: str,
        status: str,
        created: float,
        *,
        id: int | None = None,
        slot: float | None = None,
        lateness: float | None = None,
        start: float | None = None,
        end: float | None = None,
        exit_code: int | None = None,
        pid: int | None = None,
        output: str | None = None,
        return_value: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        lock: str | None = None,
        slots: int = 1,
    ):
        self.id = id
        self.task = task
        self.trigger = trigger
        self.status = status
        self.created = created
        self.slot = slot  # the scheduled moment it stands for; None outside a schedule
        self.lateness = lateness  # seconds between the slot and its claim
        self.start = start
        self.end = end
        self.exit_code = exit_code
        self.pid = pid
        self.output = output
        self.return_value = return_value
        self.error = error
        self.traceback = traceback
        self.lock = lock  # path of the lock file its process holds while alive
        self.slots = slots  # how many slots this row stands for (coalesced skips)

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


_SELECT_RUNS = "SELECT id, " + ", ".join(f'"{c}"' for c in _RUN_COLUMNS) + " FROM runs"
_SELECT_TASKS = (
    "SELECT name, next_due, anchor, enabled, run_requested, signature, last_slot,"
    " first_seen FROM tasks"
)


class Store:
    """What the engine needs from a state store; every method is atomic."""

    def sync_task(
        self,
        name: str,
        signature: str,
        next_due: float | None,
        anchor: float | None,
        enabled: bool,
        now: float,
    ) -> TaskState:
        """Create the task's row, or re-position it when its schedule changed."""
        raise NotImplementedError

    def states(self) -> dict[str, TaskState]:
        raise NotImplementedError

    def claim_slot(
        self,
        name: str,
        expected: float,
        new_next_due: float | None,
        slot: float,
        run: Run,
        merge: bool = False,
    ) -> int | None:
        """Advance next_due from ``expected`` and record ``run``; the id, or None if lost."""
        raise NotImplementedError

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        """Take the run-now request made at ``requested`` and record ``run``."""
        raise NotImplementedError

    def request_run(self, name: str, now: float) -> None:
        raise NotImplementedError

    def set_enabled(self, name: str, enabled: bool) -> None:
        raise NotImplementedError

    def add_run(self, run: Run, merge: bool = False) -> int:
        """Record ``run``; with ``merge``, fold it into an identical latest not-run row."""
        raise NotImplementedError

    def update_run(self, run_id: int, /, **values: Any) -> None:
        raise NotImplementedError

    def update_run_if(self, run_id: int, expected: str, /, **values: Any) -> bool:
        """Update the run only while its status is still ``expected``; True if it did."""
        raise NotImplementedError

    def get_run(self, run_id: int) -> Run | None:
        raise NotImplementedError

    def runs(
        self, name: str | None = None, limit: int = 50, statuses: tuple[str, ...] = ()
    ) -> list[Run]:
        """Return runs, newest first."""
        raise NotImplementedError

    def prune(self, name: str, keep: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    next_due REAL,
    anchor REAL,
    enabled INTEGER NOT NULL,
    run_requested REAL,
    signature TEXT,
    last_slot REAL,
    first_seen REAL NOT NULL
);
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
    slots INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS runs_by_task ON runs (task, id);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status) WHERE status IN ('pending', 'running');
"""


class SQLiteStore(Store):
    """The store in one SQLite file (WAL), shared by every process of the host.

    One connection per process, re-opened after ``fork()``; autocommit with
    single-statement compare-and-swap or ``BEGIN IMMEDIATE`` for anything
    that reads then writes, because deferred transactions fail at once with
    "database is locked" when they lose a race.
    """

    def __init__(self, path: Path, busy_timeout: float = 5.0):
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._inherited: list[sqlite3.Connection] = []

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self._conn is not None:
                # Inherited across fork(): never use it, never close it (closing
                # could checkpoint or drop locks under the parent's feet).
                self._inherited.append(self._conn)
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(str(self.path), str(exc)) from None
        # Switching a new file to WAL answers "locked" at once, without the
        # busy handler, while another process opens it too (gunicorn workers
        # starting together): retry for a while.
        deadline = time.monotonic() + max(self.busy_timeout, 2.0)
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                    # BEGIN IMMEDIATE waits for the write lock (busy timeout);
                    # bare DDL could fail at once on a stale read snapshot.
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA.split(";"):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                return conn
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise StateError(str(self.path), str(exc)) from None
                time.sleep(0.01)
            except sqlite3.Error as exc:
                conn.close()
                raise StateError(str(self.path), str(exc)) from None

    @contextmanager
    def _cursor(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._db
                if write:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        yield db
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
                else:
                    yield db
            except sqlite3.Error as exc:
                raise StateError(str(self.path), str(exc)) from None

    def sync_task(
        self,
        name: str,
        signature: str,
        next_due: float | None,
        anchor: float | None,
        enabled: bool,
        now: float,
    ) -> TaskState:
        with self._cursor(write=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO tasks (name, next_due, anchor, enabled, signature,"
                " first_seen) VALUES (?, ?, ?, ?, ?, ?)",
                (name, next_due, anchor, int(enabled), signature, now),
            )
            db.execute(
                "UPDATE tasks SET next_due = ?, signature = ? "
                "WHERE name = ? AND signature IS NOT ?",
                (next_due, signature, name, signature),
            )
            row = db.execute(_SELECT_TASKS + " WHERE name = ?", (name,)).fetchone()
        return _task_state(row)

    def states(self) -> dict[str, TaskState]:
        with self._cursor() as db:
            rows = db.execute(_SELECT_TASKS).fetchall()
        return {row[0]: _task_state(row) for row in rows}

    def claim_slot(
        self,
        name: str,
        expected: float,
        new_next_due: float | None,
        slot: float,
        run: Run,
        merge: bool = False,
    ) -> int | None:
        with self._cursor(write=True) as db:
            won = (
                db.execute(
                    "UPDATE tasks SET next_due = ?, last_slot = ? WHERE name = ? AND next_due = ?",
                    (new_next_due, slot, name, expected),
                ).rowcount
                == 1
            )
            return self._record(db, run, merge) if won else None

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        with self._cursor(write=True) as db:
            won = (
                db.execute(
                    "UPDATE tasks SET run_requested = NULL WHERE name = ? AND run_requested = ?",
                    (name, requested),
                ).rowcount
                == 1
            )
            return self._record(db, run) if won else None

    def request_run(self, name: str, now: float) -> None:
        with self._cursor() as db:
            db.execute(
                "UPDATE tasks SET run_requested = COALESCE(run_requested, ?) WHERE name = ?",
                (now, name),
            )

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._cursor() as db:
            db.execute("UPDATE tasks SET enabled = ? WHERE name = ?", (int(enabled), name))

    def add_run(self, run: Run, merge: bool = False) -> int:
        with self._cursor(write=True) as db:
            return self._record(db, run, merge)

    @staticmethod
    def _record(db: sqlite3.Connection, run: Run, merge: bool = False) -> int:
        if merge:
            last = db.execute(
                "SELECT id, status, error FROM runs WHERE task = ? ORDER BY id DESC LIMIT 1",
                (run.task,),
            ).fetchone()
            if last is not None and (last[1], last[2]) == (run.status, run.error):
                db.execute(
                    'UPDATE runs SET slots = slots + 1, slot = ?, "end" = ? WHERE id = ?',
                    (run.slot, run.end, last[0]),
                )
                return int(last[0])
        if run.output is not None:
            run.output = run.output[-OUTPUT_LIMIT:]
        names = ", ".join(f'"{c}"' for c in _RUN_COLUMNS)
        marks = ", ".join("?" for _ in _RUN_COLUMNS)
        cur = db.execute(
            f"INSERT INTO runs ({names}) VALUES ({marks})", [getattr(run, c) for c in _RUN_COLUMNS]
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_run(self, run_id: int, /, **values: Any) -> None:
        self._update(run_id, None, values)

    def update_run_if(self, run_id: int, expected: str, /, **values: Any) -> bool:
        return self._update(run_id, expected, values)

    def _update(self, run_id: int, status: str | None, values: dict[str, Any]) -> bool:
        unknown = set(values) - set(_RUN_COLUMNS)
        if unknown:
            raise TypeError(f"unknown run fields: {sorted(unknown)}")
        if "output" in values and values["output"] is not None:
            values["output"] = values["output"][-OUTPUT_LIMIT:]
        sets = ", ".join(f'"{k}" = ?' for k in values)
        where = "id = ?" + (" AND status = ?" if status is not None else "")
        params = [*values.values(), run_id] + ([status] if status is not None else [])
        with self._cursor() as db:
            return db.execute(f"UPDATE runs SET {sets} WHERE {where}", params).rowcount == 1

    def get_run(self, run_id: int) -> Run | None:
        with self._cursor() as db:
            row = db.execute(_SELECT_RUNS + " WHERE id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    def runs(
        self, name: str | None = None, limit: int = 50, statuses: tuple[str, ...] = ()
    ) -> list[Run]:
        where, params = [], []
        if name is not None:
            where.append("task = ?")
            params.append(name)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        sql = _SELECT_RUNS + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._cursor() as db:
            rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit]).fetchall()
        return [_run(r) for r in rows]

    def prune(self, name: str, keep: int) -> None:
        with self._cursor() as db:
            db.execute(
                "DELETE FROM runs WHERE task = ? AND status NOT IN ('pending', 'running')"
                " AND id <= (SELECT id FROM runs WHERE task = ?"
                " AND status NOT IN ('pending', 'running') ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (name, name, keep),
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def _task_state(row: tuple[Any, ...]) -> TaskState:
    name, next_due, anchor, enabled, requested, signature, last_slot, first_seen = row
    return TaskState(
        name, next_due, anchor, bool(enabled), requested, signature, last_slot, first_seen
    )


def _run(row: tuple[Any, ...]) -> Run:
    run_id, *values = row
    return Run(id=run_id, **dict(zip(_RUN_COLUMNS, values, strict=True)))


def now() -> float:
    """Return the current time as UTC epoch seconds."""
    return time.time()
