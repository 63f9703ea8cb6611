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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StateError
from . import locks, sql
from .base import Lock
from .sql import SQLITE, Session
from .sql_store import SQLStore
from .sqlite_file import busy, open_file, reason, set_aside


class SQLiteStore(SQLStore):
    """The store in one SQLite file under the state directory."""

    dialect = SQLITE

    def __init__(self, path: Path, busy_timeout: float = 5.0):
        super().__init__()
        self.path = path
        self.location = str(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._ident: tuple[int, int] | None = None
        self._inherited: list[sqlite3.Connection] = []

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

    @contextmanager
    def _session(self, write: bool = False, snapshot: bool = False) -> Iterator[Session]:
        # BEGIN IMMEDIATE takes the write lock up front (waiting the busy
        # timeout); a plain BEGIN is a read snapshot.
        begin = "BEGIN IMMEDIATE" if write else "BEGIN" if snapshot else None
        with self._lock:
            try:
                db = self._db
                if begin is None:
                    yield Session(db, self.dialect, None)
                    return
                db.execute(begin)
                try:
                    yield Session(db, self.dialect, None)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
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
            with self._session(write=True) as db:
                verdict = db.one("PRAGMA quick_check")
                db.run(sql.SET_META, key="checked", value=str(time.time()))
        except StateError as exc:
            return [str(exc)]
        if verdict != "ok":
            return [f"state at {self.path} is damaged: {verdict}"]
        return []

    # -- what only a file has ---------------------------------------------------------

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

