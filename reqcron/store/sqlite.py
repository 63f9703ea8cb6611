"""SQLiteStore: the state in one SQLite file (WAL), shared by the processes of one host.

One connection per process, re-opened after ``fork()``; autocommit with
single-statement compare-and-swap or ``BEGIN IMMEDIATE`` for anything that
reads then writes, because deferred transactions fail at once with
"database is locked" when they lose a race.  A connection that fails for
any reason but a busy database is dropped, and the next use re-opens the
file: a state directory made writable again, or deleted and recreated, is
picked up without a restart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StateError
from ..limits import capped_field
from ..records import OPEN, RUN_COLUMNS, Run, TaskState
from . import locks
from .base import (
    CLOCK_KEY,
    REMOVED,
    CatalogRow,
    Dump,
    Lock,
    Pulse,
    RunStats,
    Store,
    TaskSync,
    check_run_fields,
    run_from_row,
)
from .sqlite_file import busy, open_file, reason, set_aside

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any


_SELECT_RUNS = "SELECT id, " + ", ".join(f'"{c}"' for c in RUN_COLUMNS) + " FROM runs"
_SELECT_TASKS = (
    "SELECT name, next_due, anchor, enabled, run_requested, signature, first_seen FROM tasks"
)
_PULSE = (
    "SELECT version, key, (SELECT min(next_due) FROM tasks),"
    " (SELECT min(run_requested) FROM tasks WHERE run_requested IS NOT NULL),"
    " (SELECT value FROM meta WHERE key = ?),"
    " (SELECT min(due) FROM runs WHERE status = 'queued') FROM catalog WHERE id = 1"
)
# One row per (task, status, deferred call or not); durations where a run has both ends.
_RUN_COUNTS = (
    'SELECT task, status, call IS NOT NULL, count(*), count("end" - start), sum("end" - start),'
    ' max("end" - start), max("end") FROM runs GROUP BY task, status, call IS NOT NULL'
)
# Each task's latest run with a lateness, and its latest with a duration.
_LATEST_RUNS = (
    'SELECT id, task, lateness, "end" - start FROM runs WHERE id IN ('
    "SELECT max(id) FROM runs WHERE call IS NULL AND lateness IS NOT NULL GROUP BY task"
    ' UNION SELECT max(id) FROM runs WHERE call IS NULL AND start IS NOT NULL'
    ' AND "end" IS NOT NULL GROUP BY task)'
)
_OPEN = tuple(sorted(OPEN))  # runs that prune() keeps whatever their age
#: Caps on the text a run keeps, and which end of it matters.


def _renew_lock(ref: weakref.ref[SQLiteStore]) -> None:
    store = ref()
    if store is not None:
        # A fork taken while another thread held the lock must not deadlock
        # the child; its connection is re-opened on first use by the pid check.
        store._lock = threading.Lock()


class SQLiteStore(Store):
    """The store in one SQLite file under the state directory."""

    def __init__(self, path: Path, busy_timeout: float = 5.0):
        self.path = path
        self.location = str(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._ident: tuple[int, int] | None = None
        self._inherited: list[sqlite3.Connection] = []
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_lock(ref))

    # -- the connection ---------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if self._conn is not None and self._pid != os.getpid():
                # Inherited across fork(): never use it, never close it (closing
                # could checkpoint or drop locks under the parent's feet).
                self._inherited.append(self._conn)
                self._conn = None
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn, self._ident = open_file(self.path, self.busy_timeout)
        return conn

    def _drop(self) -> None:
        """Forget a connection that failed; the next use opens the file afresh."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except sqlite3.Error:
                pass

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
                if not busy(exc):
                    self._drop()
                raise StateError(str(self.path), reason(exc, self.path)) from None

    def verify(self) -> None:
        with self._lock:
            if self._conn is None or self._pid != os.getpid():
                return
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == self._ident
            except OSError:
                same = False
            if not same:
                self._drop()

    def problems(self) -> list[str]:
        try:
            with self._cursor(write=True) as db:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                db.execute("INSERT OR REPLACE INTO meta VALUES ('checked', ?)", (str(time.time()),))
        except StateError as exc:
            return [str(exc)]
        if verdict != "ok":
            return [f"state at {self.path} is damaged: {verdict}"]
        return []

    # -- the pulse, and small named values -----------------------------------------

    def pulse(self) -> Pulse:
        with self._cursor() as db:
            version, key, next_due, requested, clock, call_due = db.execute(
                _PULSE, (CLOCK_KEY,)).fetchone()
        return Pulse(version, key, next_due, requested, float(clock) if clock else None,
                     call_due)

    def meta(self, key: str) -> str | None:
        with self._cursor() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def init_meta(self, key: str, value: str) -> str:
        with self._cursor(write=True) as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            return str(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._cursor() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- the catalog ---------------------------------------------------------------

    def catalog(self) -> CatalogRow:
        with self._cursor() as db:
            row = db.execute(
                "SELECT version, key, data, reading_key, reading_until FROM catalog WHERE id = 1"
            ).fetchone()
        return CatalogRow(*row)

    def begin_read(self, key: str, now: float, until: float) -> bool:
        with self._cursor() as db:
            return db.execute(
                "UPDATE catalog SET reading_key = ?, reading_until = ? WHERE id = 1"
                " AND key IS NOT ? AND (reading_key IS NOT ? OR reading_until < ?)",
                (key, until, key, key, now),
            ).rowcount == 1

    def save_catalog(self, key: str, data: str, syncs: list[TaskSync], removed: list[str],
                     now: float) -> int:
        with self._cursor(write=True) as db:
            db.execute(
                "UPDATE catalog SET version = version + 1, key = ?, data = ?,"
                " reading_key = NULL, reading_until = NULL WHERE id = 1",
                (key, data),
            )
            for s in syncs:
                db.execute(
                    "INSERT OR IGNORE INTO tasks (name, next_due, anchor, enabled, signature,"
                    " first_seen) VALUES (?, ?, ?, ?, ?, ?)",
                    (s.name, s.next_due, s.anchor, int(s.enabled), s.signature, now),
                )
                db.execute(
                    "UPDATE tasks SET next_due = ?, signature = ? WHERE name = ?"
                    " AND signature IS NOT ?",
                    (s.next_due, s.signature, s.name, s.signature),
                )
            db.executemany(
                "UPDATE tasks SET next_due = NULL, signature = ? WHERE name = ?"
                " AND signature IS NOT ?",
                [(REMOVED, name, REMOVED) for name in removed],
            )
            return int(db.execute("SELECT version FROM catalog WHERE id = 1").fetchone()[0])

    # -- schedule positions ------------------------------------------------------

    def states(self) -> dict[str, TaskState]:
        with self._cursor() as db:
            rows = db.execute(_SELECT_TASKS).fetchall()
        return {row[0]: _state(row) for row in rows}

    def state(self, name: str) -> TaskState | None:
        with self._cursor() as db:
            row = db.execute(_SELECT_TASKS + " WHERE name = ?", (name,)).fetchone()
        return _state(row) if row else None

    def due_states(self, now: float) -> list[TaskState]:
        with self._cursor() as db:
            rows = db.execute(
                _SELECT_TASKS + " WHERE next_due <= ? UNION "
                + _SELECT_TASKS + " WHERE run_requested <= ?",
                (now, now),
            ).fetchall()
        return [_state(row) for row in rows]

    def claim_slot(self, name: str, expected: float, signature: str,
                   new_next_due: float | None, run: Run, merge: bool = False,
                   clock: float | None = None) -> int | None:
        with self._cursor(write=True) as db:
            won = db.execute(
                "UPDATE tasks SET next_due = ? WHERE name = ? AND next_due = ? AND signature = ?",
                (new_next_due, name, expected, signature),
            ).rowcount == 1
            if not won:
                return None
            if clock is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CLOCK_KEY, repr(clock)))
            return self._record(db, run, merge)

    def reposition(self, name: str, expected: float | None, signature: str,
                   new_next_due: float | None) -> bool:
        with self._cursor() as db:
            return db.execute(
                "UPDATE tasks SET next_due = ? WHERE name = ? AND next_due IS ?"
                " AND signature = ?",
                (new_next_due, name, expected, signature),
            ).rowcount == 1

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        with self._cursor(write=True) as db:
            won = db.execute(
                "UPDATE tasks SET run_requested = NULL WHERE name = ? AND run_requested = ?",
                (name, requested),
            ).rowcount == 1
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

    # -- history ---------------------------------------------------------------

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
            error = capped_field("error", run.error)
            if last is not None and (last[1], last[2]) == (run.status, error):
                db.execute(
                    'UPDATE runs SET slots = slots + ?, slot = ?, "end" = ? WHERE id = ?',
                    (run.slots, run.slot, run.end, last[0]),
                )
                return int(last[0])
        names = ", ".join(f'"{c}"' for c in RUN_COLUMNS)
        marks = ", ".join("?" for _ in RUN_COLUMNS)
        cur = db.execute(
            f"INSERT INTO runs ({names}) VALUES ({marks})",
            [capped_field(c, getattr(run, c)) for c in RUN_COLUMNS],
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_run(self, run_id: int, /, **values: Any) -> None:
        self._update(run_id, None, values)

    def update_run_if(self, run_id: int, expected: str, /, **values: Any) -> bool:
        return self._update(run_id, expected, values)

    def _update(self, run_id: int, status: str | None, values: dict[str, Any]) -> bool:
        check_run_fields(values)
        sets = ", ".join(f'"{k}" = ?' for k in values)
        where = "id = ?" + (" AND status = ?" if status is not None else "")
        params = [capped_field(k, v) for k, v in values.items()] + [run_id]
        params += [status] if status is not None else []
        with self._cursor() as db:
            return db.execute(f"UPDATE runs SET {sets} WHERE {where}", params).rowcount == 1

    def get_run(self, run_id: int) -> Run | None:
        with self._cursor() as db:
            row = db.execute(_SELECT_RUNS + " WHERE id = ?", (run_id,)).fetchone()
        return run_from_row(row) if row else None

    def runs(self, name: str | None = None, limit: int = 50,
             statuses: tuple[str, ...] = (), *, before: int | None = None,
             after: int | None = None) -> list[Run]:
        where: list[str] = []
        params: list[str | int] = []
        if name is not None:
            where.append("task = ?")
            params.append(name)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        sql = _SELECT_RUNS + (f" WHERE {' AND '.join(where)}" if where else "")
        order = "ASC" if after is not None else "DESC"
        with self._cursor() as db:
            rows = db.execute(sql + f" ORDER BY id {order} LIMIT ?", [*params, limit]).fetchall()
        runs = [run_from_row(r) for r in rows]
        return runs[::-1] if after is not None else runs

    def prune(self, name: str, keep: int) -> None:
        with self._cursor() as db:
            db.execute(
                "DELETE FROM runs WHERE task = ? AND status NOT IN (?, ?, ?)"
                " AND id <= (SELECT id FROM runs WHERE task = ?"
                " AND status NOT IN (?, ?, ?) ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (name, *_OPEN, name, *_OPEN, keep),
            )

    def run_stats(self) -> RunStats:
        with self._cursor() as db:
            # One read transaction: both queries see the same history.
            db.execute("BEGIN")
            try:
                counts = db.execute(_RUN_COUNTS).fetchall()
                latest = db.execute(_LATEST_RUNS).fetchall()
            finally:
                db.execute("COMMIT")
        return RunStats.from_rows(counts, latest)

    # -- deferred calls -------------------------------------------------------------

    def take_call(self, now: float, pid: int, lock: str) -> Run | None:
        with self._cursor() as db:
            # A read first: a drainer waiting for work must not take the write lock.
            if not db.execute("SELECT 1 FROM runs WHERE status = 'queued' AND due <= ? LIMIT 1",
                              (now,)).fetchone():
                return None
            # One statement, so atomic: of two processes, one updates the row.
            row = db.execute(
                "UPDATE runs SET status = 'running', start = ?, pid = ?, lock = ?,"
                " attempts = attempts + 1, \"end\" = NULL WHERE id = (SELECT id FROM runs"
                " WHERE status = 'queued' AND due <= ? ORDER BY due, id LIMIT 1)"
                " AND status = 'queued' RETURNING id",
                (now, pid, lock, now),
            ).fetchone()
            if row is None:
                return None
            found = db.execute(_SELECT_RUNS + " WHERE id = ?", (row[0],)).fetchone()
        return run_from_row(found)

    def release_calls(self, ids: list[int], hold: float) -> None:
        with self._cursor() as db:
            db.execute(
                f"UPDATE runs SET due = due - ? WHERE status = 'queued' AND attempts = 0"
                f" AND id IN ({', '.join('?' for _ in ids)})",
                [hold, *ids],
            )

    def due_calls(self, now: float, limit: int) -> int:
        with self._cursor() as db:
            return int(db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'queued' AND due <= ?"
                " LIMIT ?)", (now, limit)).fetchone()[0])

    def calls_running(self) -> int:
        with self._cursor() as db:
            return int(db.execute("SELECT count(*) FROM runs WHERE status = 'running'"
                                  " AND call IS NOT NULL").fetchone()[0])

    def prune_calls(self, before: float) -> int:
        with self._cursor() as db:
            return db.execute(
                f"DELETE FROM runs WHERE call IS NOT NULL AND \"end\" < ?"
                f" AND status NOT IN ({', '.join('?' for _ in _OPEN)})", (before, *_OPEN),
            ).rowcount

    def dump(self) -> Dump:
        with self._cursor() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute(_SELECT_RUNS + " ORDER BY id").fetchall()
        runs = [run_from_row(r) for r in rows]
        return Dump(meta, self.catalog(), list(self.states().values()), runs)

    def restore(self, dump: Dump) -> None:
        with self._cursor(write=True) as db:
            if db.execute("SELECT EXISTS (SELECT 1 FROM tasks UNION ALL SELECT 1 FROM runs)"
                          ).fetchone()[0]:
                raise StateError(str(self.path), "it is not empty; nothing was copied")
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", dump.meta.items())
            c = dump.catalog
            db.execute("UPDATE catalog SET version = ?, key = ?, data = ? WHERE id = 1",
                       (c.version, c.key, c.data))
            db.executemany(
                "INSERT INTO tasks (name, next_due, anchor, enabled, run_requested, signature,"
                " first_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(t.name, t.next_due, t.anchor, int(t.enabled), t.run_requested, t.signature,
                  t.first_seen) for t in dump.tasks])
            for run in dump.runs:
                self._record(db, run)

    def set_aside(self) -> str | None:
        with self._lock:
            self._drop()
            return set_aside(self.path)

    def take_task_lock(self, name: str) -> Lock | None:
        return locks.take_task_lock(self.path.parent, name)

    def held_task_locks(self, names: list[str]) -> int:
        folder = locks.lock_dir(self.path.parent)
        return sum(locks.holder_alive(str(folder / f"{name}.lock")) for name in names)

    def take_run_lock(self) -> Lock:
        return locks.take_run_lock(self.path.parent)

    def lock_alive(self, token: str) -> bool:
        return locks.holder_alive(token)

    def forget_lock(self, token: str) -> None:
        locks.forget(token)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _state(row: tuple[Any, ...]) -> TaskState:
    name, next_due, anchor, enabled, requested, signature, first_seen = row
    return TaskState(name, next_due, anchor, bool(enabled), requested, signature, first_seen)


