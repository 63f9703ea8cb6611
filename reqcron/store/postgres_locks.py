"""Locks that die with their holder, across hosts: PostgreSQL session advisory locks.

They are held on a connection of their own (the lock connection), which
the server frees when its holder's session ends: at once for a killed
process, within KEEPALIVE_BOUND seconds for a host that lost power.  A lock
is named by a 64-bit key: a task's is a hash of the site and the task's
name, a run's is random; a run row keeps ``pg:<key>`` as its token.
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from ..errors import StateError
from .base import Lock
from .postgres_conn import driver, unreachable, went_away

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    import psycopg


class PgLock:
    """A session advisory lock held on the store's lock connection."""

    def __init__(self, locks: AdvisoryLocks, key: int, conn: psycopg.Connection):
        self._locks, self._key = locks, key
        self.token = f"pg:{key}"
        self.fds: tuple[int, ...] = (conn.fileno(),)

    def release(self) -> None:
        self._locks._unlock(self._key)


class AdvisoryLocks(ABC):
    """The lock half of PostgresStore: what it holds on its lock connection."""

    site: str | None
    location: str
    _lock: threading.Lock
    _locker: psycopg.Connection | None
    _held: set[int]
    _pid: int

    @abstractmethod
    def _connect(self) -> psycopg.Connection:
        """A new connection to the store's database."""

    @abstractmethod
    def _forget_inherited(self) -> None:
        """Drop the connections a fork() inherited (the parent's, never used here)."""

    @abstractmethod
    def _session_cursor(self) -> AbstractContextManager[Any]:
        """A cursor on the query connection, its errors as StateError."""

    def _locker_conn(self) -> psycopg.Connection:
        if self._pid != os.getpid():
            self._forget_inherited()
        if self._locker is None or self._locker.closed:
            self._locker = self._connect()
            self._held = set()
        return self._locker

    def _try_lock(self, key: int) -> PgLock | None:
        pg = driver(self.location)
        with self._lock:
            try:
                conn = self._locker_conn()
                won = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except pg.Error as exc:
                raise unreachable(self.location, exc) from None
            if not (won and won[0]):
                return None
            self._held.add(key)
            return PgLock(self, key, conn)

    def _unlock(self, key: int) -> None:
        with self._lock:
            self._held.discard(key)
            if self._locker is not None and not self._locker.closed:
                try:
                    self._locker.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except Exception:
                    pass  # a lost connection has released it already
                if not self._held:
                    self._locker.close()
                    self._locker = None

    def keep_locks(self) -> list[str]:
        """Re-take the held locks on a new session when theirs went away (terminated,
        timed out, cut); return the tokens another session took meanwhile."""
        pg = driver(self.location)
        with self._lock:
            if (self._pid != os.getpid() or self._locker is None or not self._held
                    or not went_away(self._locker)):
                return []
            held, lost = set(self._held), []
            self._locker.close()
            self._locker = None
            try:
                conn = self._connect()
            except StateError:
                return []  # still away: the next look tries again (self._held kept)
            self._locker = conn
            for key in held:
                try:
                    won = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                except pg.Error:
                    return []
                if not (won and won[0]):
                    self._held.discard(key)
                    lost.append(f"pg:{key}")
            return lost

    def take_task_lock(self, name: str) -> Lock | None:
        return self._try_lock(_key(f"{self.site}\0task\0{name}"))

    def held_task_locks(self, names: list[str]) -> int:
        keys = [_key(f"{self.site}\0task\0{name}") & 0xFFFF_FFFF_FFFF_FFFF for name in names]
        with self._session_cursor() as cur:
            # A bigint advisory key shows in pg_locks as classid (high half), objid (low half).
            cur.execute("SELECT count(*) FROM pg_locks l JOIN unnest(%s::bigint[], %s::bigint[])"
                        " AS k(hi, lo) ON l.classid::bigint = k.hi AND l.objid::bigint = k.lo"
                        " WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
                        " AND l.database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())",
                        ([k >> 32 for k in keys], [k & 0xFFFF_FFFF for k in keys]))
            return int(cur.fetchone()[0])

    def take_run_lock(self) -> Lock:
        while True:
            lock = self._try_lock(int.from_bytes(os.urandom(8), "big", signed=True))
            if lock is not None:
                return lock

    def lock_alive(self, token: str) -> bool:
        if not token.startswith("pg:"):
            return False  # a lock of another kind of state: its holder is not here
        key = int(token[3:])
        with self._session_cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            won = cur.fetchone()
            if won and won[0]:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                return False
        return True

    def _close_locker(self) -> None:
        if self._locker is not None and self._pid == os.getpid():
            self._locker.close()
        self._locker = None


def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big",
                          signed=True)
