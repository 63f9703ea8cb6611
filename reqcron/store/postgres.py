"""PostgresStore: one state in PostgreSQL shared by every host of a site.

Rows are keyed by the site's name (DOCROOT paths differ between hosts).
Claims are one compare-and-swap UPDATE inside a transaction that also
records the run, so across hosts each slot is claimed once.  Locks are
session advisory locks on a connection of their own (postgres_locks.py).

One query connection per process, opened lazily with a short connect
timeout (postgres_conn.py) and re-opened after fork() or a failure;
nothing connects on a request's path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StateError
from . import sql
from .postgres_conn import (
    CONNECT_TIMEOUT,
    KEEPALIVE,
    KEEPALIVE_BOUND,
    connect,
    driver,
    ensure_schema,
    first,
    redact,
    unreachable,
    went_away,
)
from .postgres_locks import AdvisoryLocks, PgLock
from .sql import Session
from .sql_store import SQLStore

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    import psycopg

__all__ = ["CONNECT_TIMEOUT", "KEEPALIVE", "KEEPALIVE_BOUND", "PgLock", "PostgresStore",
           "redact"]


class PostgresStore(AdvisoryLocks, SQLStore):
    """The state of one site in a PostgreSQL database."""

    leases = True
    networked = True

    dialect = sql.POSTGRES
    site: str
    not_empty = "this site already has a state there; nothing was copied"

    def __init__(self, url: str, site: str, connect_timeout: float = CONNECT_TIMEOUT, *,
                 # Seconds a statement waits for a lock (lock_timeout), as SQLite's busy
                 # timeout: short on a request's path.  statement_timeout follows from it.
                 busy_timeout: float = 5.0):
        super().__init__()
        self.busy_timeout = busy_timeout
        self.url = url
        self.site = site
        self.location = f"{redact(url)} (site {site})"
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._locker: psycopg.Connection | None = None
        self._held: set[int] = set()
        self._pid = 0
        self._schema_ok = False

    # -- connections -------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        conn = connect(self.url, self.connect_timeout, self.location, self, self.busy_timeout)
        if not self._schema_ok:  # once per process: a second connection needs no check
            try:
                ensure_schema(conn, self.site, self.location)
            except BaseException as exc:
                conn.close()
                if isinstance(exc, driver(self.location).Error):
                    raise StateError(self.location, first(exc)) from None
                raise
            self._schema_ok = True
        return conn

    def _forget_inherited(self) -> None:
        # Inherited across fork(): the parent's; never used, never closed here.
        self._conn = self._locker = None
        self._held = set()
        self._pid = os.getpid()

    @property
    def _db(self) -> psycopg.Connection:
        if self._pid != os.getpid():
            self._forget_inherited()
        if self._conn is not None and went_away(self._conn):
            # Ended while idle (pg_terminate_backend, idle_session_timeout, a cut
            # proxy): nothing was sent on it, so a new one is used at once.
            self._drop()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _session_cursor(self, write: bool = False,
                        snapshot: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        pg = driver(self.location)
        with self._lock:
            try:
                db = self._db
                if write or snapshot:
                    with db.transaction(), db.cursor() as cur:
                        if snapshot:  # one snapshot, as another host writes
                            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                                        " READ ONLY")
                        yield cur
                else:
                    with db.cursor() as cur:
                        yield cur
            except pg.Error as exc:
                if (isinstance(exc, pg.errors.LockNotAvailable | pg.errors.QueryCanceled)
                        and not (self._conn and self._conn.broken)):
                    # lock_timeout or statement_timeout: the session is fine, keep it.
                    raise StateError(self.location, f"busy: {first(exc)}") from None
                if isinstance(exc, pg.OperationalError) or (self._conn and self._conn.broken):
                    self._drop()
                    raise unreachable(self.location, exc) from None
                raise StateError(self.location, first(exc)) from None

    @contextmanager
    def _session(self, write: bool = False, snapshot: bool = False) -> Iterator[Session]:
        with self._session_cursor(write, snapshot) as cur:
            yield Session(cur, self.dialect, self.site)

    def problems(self) -> list[str]:
        try:
            with self._session(write=True) as db:
                db.run(sql.SET_META, key="checked", value=repr(time.time()))
        except StateError as exc:
            return [str(exc)]
        return []

    def connection_fds(self) -> tuple[int, ...]:
        return tuple(c.fileno() for c in (self._conn, self._locker)
                     if c is not None and not c.closed and self._pid == os.getpid())

    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and self._pid == os.getpid()

    def set_aside(self) -> str | None:
        raise StateError(self.location, "a shared PostgreSQL state is not reset by reqcron; "
                         "every host uses it")

    def close(self) -> None:
        with self._lock:
            self._drop()
            self._close_locker()
