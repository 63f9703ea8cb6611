"""SQLStore: every Store method that is the same SQL on SQLite and PostgreSQL, written once.

A backend supplies its connection (``_session``: a read, a write
transaction, or a read-only snapshot), its locks and its health checks;
the statements (sql.py) are spelled for it by its ``Dialect``.
"""

from __future__ import annotations

import os
import threading
import weakref
from abc import abstractmethod
from contextlib import AbstractContextManager

from ..errors import StateError
from ..limits import capped_field
from ..records import RUN_COLUMNS, Run, TaskState
from . import sql
from .base import CLOCK_KEY, REMOVED, Store
from .rows import Attempt, CatalogRow, Dump, Pulse, RunStats, TaskSync
from .sql import Session, check_run_fields, run_from_row, task_from_row

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any


def _renew_lock(ref: weakref.ref[SQLStore]) -> None:
    store = ref()
    if store is not None:
        # A fork taken while another thread held the lock must not deadlock
        # the child; its connection is re-opened on first use by the pid check.
        store._lock = threading.Lock()


class SQLStore(Store):
    """The store over SQL: schedule positions, the catalog, history and deferred calls."""

    dialect: sql.Dialect
    site: str | None = None
    _conn: Any  # this process's connection, or None
    _pid: int  # the process that opened it
    #: What restore() says when the state already holds something.
    not_empty = "it is not empty; nothing was copied"

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one statement at a time on this process's connection
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_lock(ref))

    @abstractmethod
    def _session(self, write: bool = False,
                 snapshot: bool = False) -> AbstractContextManager[Session]:
        """This process's connection: autocommit, a write transaction, or a read-only snapshot."""

    def _drop(self) -> None:
        """Forget a connection that failed; the next use opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():  # never the parent's, after fork()
            try:
                conn.close()
            except Exception:
                pass

    def _text(self, column: str, value: Any) -> Any:
        return capped_field(column, self.dialect.text(value))

    # -- the pulse, and small named values -----------------------------------------

    def pulse(self) -> Pulse:
        with self._session() as db:
            version, key, next_due, requested, clock, call_due = db.run(
                sql.PULSE, key=CLOCK_KEY).fetchone()
        return Pulse(version, key, next_due, requested, float(clock) if clock else None,
                     call_due)

    def meta(self, key: str) -> str | None:
        with self._session() as db:
            value = db.one(sql.GET_META, key=key)
        return None if value is None else str(value)

    def init_meta(self, key: str, value: str) -> str:
        with self._session(write=True) as db:
            db.run(sql.INIT_META, key=key, value=value)
            return str(db.one(sql.GET_META, key=key))

    def set_meta(self, key: str, value: str) -> None:
        with self._session() as db:
            db.run(sql.SET_META, key=key, value=value)

    # -- the catalog -----------------------------------------------------------------

    def catalog(self) -> CatalogRow:
        with self._session() as db:
            row = db.run(sql.CATALOG).fetchone()
        assert row is not None
        return CatalogRow(*row)

    def begin_read(self, key: str, now: float, until: float) -> bool:
        with self._session() as db:
            return db.run(sql.BEGIN_READ, key=key, now=now, until=until).rowcount == 1

    def save_catalog(self, key: str, data: str, syncs: list[TaskSync], removed: list[str],
                     now: float) -> int:
        with self._session(write=True) as db:
            version = int(db.one(sql.SAVE_CATALOG, key=key, data=self.dialect.text(data)))
            for s in syncs:
                db.run(sql.SYNC_TASK, name=s.name, next_due=s.next_due, anchor=s.anchor,
                       enabled=s.enabled, signature=s.signature, now=now)
            for name in removed:
                db.run(sql.REMOVE_TASK, name=name, signature=REMOVED)
            return version

    # -- schedule positions ----------------------------------------------------------

    def states(self) -> dict[str, TaskState]:
        with self._session() as db:
            rows = db.run(sql.SELECT_TASKS + " WHERE {site}1 = 1").fetchall()
        return {row[0]: task_from_row(row) for row in rows}

    def state(self, name: str) -> TaskState | None:
        with self._session() as db:
            row = db.run(sql.SELECT_TASKS + " WHERE {site}name = :name", name=name).fetchone()
        return task_from_row(row) if row else None

    def due_states(self, now: float) -> list[TaskState]:
        with self._session() as db:
            rows = db.run(sql.DUE_TASKS, now=now).fetchall()
        return [task_from_row(row) for row in rows]

    def claim_slot(self, name: str, expected: float, signature: str,
                   new_next_due: float | None, run: Run, merge: bool = False,
                   clock: float | None = None) -> int | None:
        with self._session(write=True) as db:
            if db.run(sql.CLAIM_SLOT, new=new_next_due, name=name, expected=expected,
                      signature=signature).rowcount != 1:
                return None
            if clock is not None:
                db.run(sql.SET_META, key=CLOCK_KEY, value=repr(clock))
            return self._record(db, run, merge)

    def reposition(self, name: str, expected: float | None, signature: str,
                   new_next_due: float | None) -> bool:
        with self._session() as db:
            return db.run(sql.REPOSITION, new=new_next_due, name=name, expected=expected,
                          signature=signature).rowcount == 1

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        with self._session(write=True) as db:
            won = db.run(sql.CLAIM_REQUEST, name=name, requested=requested).rowcount == 1
            return self._record(db, run) if won else None

    def request_run(self, name: str, now: float) -> None:
        with self._session() as db:
            db.run(sql.REQUEST_RUN, name=name, now=now)

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._session() as db:
            db.run(sql.SET_ENABLED, name=name, enabled=enabled)

    # -- history -----------------------------------------------------------------------

    def add_run(self, run: Run, merge: bool = False) -> int:
        with self._session(write=True) as db:
            return self._record(db, run, merge)

    def add_runs(self, runs: list[Run]) -> list[int]:
        with self._session(write=True) as db:
            return [self._record(db, run) for run in runs]

    def _record(self, db: Session, run: Run, merge: bool = False) -> int:
        if merge:
            last = db.run(sql.LAST_RUN, task=run.task).fetchone()
            if last is not None and (last[1], last[2]) == (run.status,
                                                           self._text("error", run.error)):
                db.run(sql.MERGE_RUN, slots=run.slots, slot=run.slot, end=run.end, id=last[0])
                return int(last[0])
        return int(db.one(sql.INSERT_RUN, {c: self._text(c, getattr(run, c))
                                           for c in RUN_COLUMNS}))

    def update_run(self, run_id: int, /, **values: Any) -> None:
        self._update(run_id, None, values)

    def update_run_if(self, attempt: Attempt, /, **values: Any) -> bool:
        return self._update(attempt.id, attempt, values)

    def _update(self, run_id: int, attempt: Attempt | None, values: dict[str, Any]) -> bool:
        check_run_fields(values)
        sets = ", ".join(f'"{k}" = :{k}' for k in values)
        params = {k: self._text(k, v) for k, v in values.items()}
        where = "{site}id = :id"
        if attempt is not None:  # one compare-and-swap on the attempt as its writer read it
            where += sql.SAME_ATTEMPT
            params.update(was_status=attempt.status, was_lock=attempt.lock,
                          was_attempts=attempt.attempts)
        with self._session() as db:
            return db.run(f"UPDATE {{runs}} SET {sets} WHERE {where}", params,
                          id=run_id).rowcount == 1

    def get_run(self, run_id: int) -> Run | None:
        with self._session() as db:
            row = db.run(sql.SELECT_RUNS + " WHERE {site}id = :id", id=run_id).fetchone()
        return run_from_row(row) if row else None

    def runs(self, name: str | None = None, limit: int = 50,
             statuses: tuple[str, ...] = (), *, before: int | None = None,
             after: int | None = None) -> list[Run]:
        where, params = ["{site}1 = 1"], {"name": name, "before": before, "after": after,
                                          "limit": limit}
        if name is not None:
            where.append("task = :name")
        if statuses:
            where.append(f"status IN {sql.in_list('status', statuses, params)}")
        if before is not None:
            where.append("id < :before")
        if after is not None:
            where.append("id > :after")
        # A page just above ``after`` is read upwards, then turned newest first.
        order = "ASC" if after is not None else "DESC"
        with self._session() as db:
            rows = db.run(f"{sql.SELECT_RUNS} WHERE {' AND '.join(where)}"
                          f" ORDER BY id {order} LIMIT :limit", params).fetchall()
        runs = [run_from_row(r) for r in rows]
        return runs[::-1] if after is not None else runs

    def prune(self, name: str, keep: int) -> None:
        with self._session() as db:
            db.run(sql.PRUNE, task=name, keep=keep)

    def run_stats(self) -> RunStats:
        with self._session(snapshot=True) as db:  # both queries see the same history
            counts = db.run(sql.RUN_COUNTS).fetchall()
            latest = db.run(sql.LATEST_RUNS).fetchall()
        return RunStats.from_rows(counts, latest)

    # -- deferred calls ----------------------------------------------------------------

    def take_call(self, now: float, pid: int, lock: str) -> Run | None:
        with self._session() as db:
            # A read first: a drainer waiting for work must not take a write lock.
            if db.run(sql.QUEUED, now=now).fetchone() is None:
                return None
            row = db.run(sql.TAKE_CALL, now=now, pid=pid, lock=lock).fetchone()
        return run_from_row(row) if row else None

    def find_call(self, token: str) -> int | None:
        # A scan, but only when a spooled call is enqueued: rare, after an outage.
        with self._session() as db:
            row = db.run("SELECT id FROM {runs} WHERE {site}call LIKE :pattern LIMIT 1",
                         pattern=f'%"token":"{token}"%').fetchone()
        return int(row[0]) if row else None

    def release_calls(self, ids: list[int], hold: float) -> None:
        # In slices: a request that deferred 10,000 calls must not pass a statement more
        # parameters than the database takes (SQLite's limit was 999 before 3.32).
        with self._session(write=True) as db:
            for start in range(0, len(ids), 500):
                params: dict[str, Any] = {"hold": hold}
                marks = sql.in_list("id", ids[start:start + 500], params)
                db.run("UPDATE {runs} SET due = due - :hold WHERE {site}status = 'queued'"
                       f" AND attempts = 0 AND id IN {marks}", params)

    def due_calls(self, now: float, limit: int) -> int:
        with self._session() as db:
            return int(db.one(sql.DUE_CALLS, now=now, limit=limit))

    def calls_running(self) -> int:
        with self._session() as db:
            return int(db.one(sql.CALLS_RUNNING))

    def prune_calls(self, before: float) -> int:
        with self._session() as db:
            return db.run(sql.PRUNE_CALLS, before=before).rowcount

    # -- copying a whole state ---------------------------------------------------------

    def dump(self) -> Dump:
        with self._session(snapshot=True) as db:
            meta = {k: v for k, v in db.run(sql.ALL_META).fetchall()}
            catalog = CatalogRow(*db.run(sql.CATALOG).fetchone())
            tasks = [task_from_row(r) for r in db.run(sql.SELECT_TASKS + " WHERE {site}1 = 1")
                     .fetchall()]
            rows = db.run(sql.SELECT_RUNS + " WHERE {site}1 = 1 ORDER BY id").fetchall()
        return Dump(meta, catalog, tasks, [run_from_row(r) for r in rows])

    def restore(self, dump: Dump) -> None:
        with self._session(write=True) as db:
            if db.one(sql.ANY_STATE):
                raise StateError(self.location, self.not_empty)
            for key, value in dump.meta.items():
                db.run(sql.SET_META, key=key, value=value)
            c = dump.catalog
            db.run(sql.RESTORE_CATALOG, version=c.version, key=c.key,
                   data=self.dialect.text(c.data))
            for t in dump.tasks:
                db.run(sql.RESTORE_TASK, name=t.name, next_due=t.next_due, anchor=t.anchor,
                       enabled=t.enabled, run_requested=t.run_requested,
                       signature=t.signature, first_seen=t.first_seen)
            for run in dump.runs:
                self._record(db, run)
