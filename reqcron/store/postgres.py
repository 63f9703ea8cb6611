"""PostgresStore: one state in PostgreSQL shared by every host of a site; psycopg only here.

Rows are keyed by the site's name (DOCROOT paths differ between hosts).
Claims are one compare-and-swap UPDATE inside a transaction that also
records the run, so across hosts each slot is claimed once.  Locks are
session advisory locks on a connection of their own, which the server
frees when the holder's connection dies: at once for a killed process,
and within KEEPALIVE_BOUND seconds for a host that lost power (TCP
keepalives, set for both ends of the connection).

One query connection per process, opened lazily with a short connect
timeout and re-opened after fork() or a failure; nothing connects on a
request's path.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from ..errors import StateError
from ..limits import capped_field
from ..records import OPEN, RUN_COLUMNS, Run, TaskState
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

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    import psycopg

CONNECT_TIMEOUT = 3  # seconds: an unreachable database costs a check this long, never a request
KEEPALIVE = (10, 5, 3)  # idle, interval, count: a dead peer's session ends within ~25 s
KEEPALIVE_BOUND = KEEPALIVE[0] + KEEPALIVE[1] * KEEPALIVE[2]
SCHEMA_VERSION = 2
_SCHEMA_LOCK = 0x7265716372_6F6E  # pg_advisory_xact_lock key while the schema is made
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reqcron_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS reqcron_tasks (
    site text NOT NULL, name text NOT NULL,
    next_due double precision, anchor double precision, enabled boolean NOT NULL,
    run_requested double precision, signature text, first_seen double precision NOT NULL,
    PRIMARY KEY (site, name)
);
CREATE INDEX IF NOT EXISTS reqcron_tasks_next_due ON reqcron_tasks (site, next_due);
CREATE TABLE IF NOT EXISTS reqcron_runs (
    id bigserial PRIMARY KEY, site text NOT NULL, task text NOT NULL, trigger text NOT NULL,
    status text NOT NULL, created double precision NOT NULL,
    slot double precision, lateness double precision, start double precision,
    "end" double precision, exit_code integer, pid integer,
    output text, return_value text, error text, traceback text, lock text,
    slots integer NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS reqcron_runs_by_task ON reqcron_runs (site, task, id);
CREATE INDEX IF NOT EXISTS reqcron_runs_open ON reqcron_runs (site, status)
    WHERE status IN ('pending', 'running');
ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS call text;
ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS due double precision;
ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS notified text;
CREATE INDEX IF NOT EXISTS reqcron_runs_queued ON reqcron_runs (site, due, id)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS reqcron_calls_by_end ON reqcron_runs (site, "end")
    WHERE call IS NOT NULL;
CREATE TABLE IF NOT EXISTS reqcron_meta (
    site text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (site, key)
);
CREATE TABLE IF NOT EXISTS reqcron_catalog (
    site text PRIMARY KEY, version integer NOT NULL, key text, data text,
    reading_key text, reading_until double precision
)
"""
_OPEN = "(" + ", ".join(f"'{s}'" for s in sorted(OPEN)) + ")"  # prune() keeps them
# As in sqlite.py: counts by (task, status, call or not), and each task's latest runs.
_RUN_COUNTS = (
    'SELECT task, status, call IS NOT NULL, count(*), count("end" - start), sum("end" - start),'
    ' max("end" - start), max("end") FROM reqcron_runs WHERE site = %(s)s'
    " GROUP BY task, status, call IS NOT NULL"
)
_LATEST_RUNS = (
    'SELECT id, task, lateness, "end" - start FROM reqcron_runs WHERE id IN ('
    "SELECT max(id) FROM reqcron_runs WHERE site = %(s)s AND call IS NULL"
    " AND lateness IS NOT NULL GROUP BY task"
    " UNION SELECT max(id) FROM reqcron_runs WHERE site = %(s)s AND call IS NULL"
    ' AND start IS NOT NULL AND "end" IS NOT NULL GROUP BY task)'
)
_TASK_COLUMNS = "name, next_due, anchor, enabled, run_requested, signature, first_seen"
_RUN_SELECT = "SELECT id, " + ", ".join(f'"{c}"' for c in RUN_COLUMNS) + " FROM reqcron_runs"


def redact(url: str) -> str:
    """The URL without its password, for logs and screens."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StateError("state", "a PostgreSQL state needs psycopg: pip install "
                         "'reqcron[postgres]'") from None
    return psycopg


def _renew(ref: weakref.ref[PostgresStore]) -> None:
    store = ref()
    if store is not None:
        store._lock = threading.Lock()


class PgLock:
    """A session advisory lock held on the store's lock connection."""

    def __init__(self, store: PostgresStore, key: int, token: str, conn: psycopg.Connection):
        self._store, self._key = store, key
        self.token = token
        self.fds: tuple[int, ...] = (conn.fileno(),)

    def release(self) -> None:
        self._store._unlock(self._key)


class PostgresStore(Store):
    """The state of one site in a PostgreSQL database."""

    def __init__(self, url: str, site: str, connect_timeout: float = CONNECT_TIMEOUT):
        self.url = url
        self.site = site
        self.location = f"{redact(url)} (site {site})"
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._locker: psycopg.Connection | None = None
        self._held: set[int] = set()
        self._pid = 0
        self._schema_ok = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew(ref))

    # -- connections -------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        pg = _driver()
        idle, interval, count = KEEPALIVE
        try:
            conn: psycopg.Connection = pg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                keepalives=1, keepalives_idle=idle, keepalives_interval=interval,
                keepalives_count=count, application_name="reqcron",
                # The server's side too: it ends the session of a host that lost power.
                options=f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval}"
                        f" -c tcp_keepalives_count={count}",
            )
        except pg.Error as exc:
            problem = f"the database cannot be reached: {_first(exc)}"
            raise StateError(self.location, problem) from None
        try:
            if not self._schema_ok:  # once per process: a second connection needs no check
                self._ensure_schema(conn)
                self._schema_ok = True
        except pg.Error as exc:
            conn.close()
            raise StateError(self.location, _first(exc)) from None
        # Closed with the store, but only by the process that opened it: a
        # forked child closing it would end its parent's session.
        weakref.finalize(self, _close_in, os.getpid(), conn)
        return conn

    def _ensure_schema(self, conn: psycopg.Connection) -> None:
        pg = _driver()
        try:
            row = conn.execute("SELECT max(version) FROM reqcron_schema").fetchone()
            version = row[0] if row else None
        except pg.errors.UndefinedTable:
            version = None
        if version != SCHEMA_VERSION:
            if version is not None and version > SCHEMA_VERSION:
                raise StateError(self.location, f"its schema is version {version}, newer than "
                                 "this reqcron knows")
            with conn.transaction():  # two hosts starting at once: one makes it
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA.split(";"):
                    conn.execute(statement)
                conn.execute("DELETE FROM reqcron_schema")
                conn.execute("INSERT INTO reqcron_schema VALUES (%s)", (SCHEMA_VERSION,))
        conn.execute("INSERT INTO reqcron_catalog (site, version) VALUES (%s, 0)"
                     " ON CONFLICT DO NOTHING", (self.site,))

    @property
    def _db(self) -> psycopg.Connection:
        if self._pid != os.getpid():
            # Inherited across fork(): the parent's; never used, never closed here.
            self._conn = self._locker = None
            self._held = set()
            self._pid = os.getpid()
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:
                pass

    @contextmanager
    def _cursor(self, write: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        pg = _driver()
        with self._lock:
            try:
                db = self._db
                if write:
                    with db.transaction(), db.cursor() as cur:
                        yield cur
                else:
                    with db.cursor() as cur:
                        yield cur
            except pg.Error as exc:
                if isinstance(exc, pg.OperationalError) or (self._conn and self._conn.broken):
                    self._drop()
                    raise StateError(self.location, f"the database cannot be reached: "
                                     f"{_first(exc)}") from None
                raise StateError(self.location, _first(exc)) from None

    def problems(self) -> list[str]:
        try:
            with self._cursor(write=True) as cur:
                cur.execute("INSERT INTO reqcron_meta VALUES (%s, 'checked', %s) ON CONFLICT"
                            " (site, key) DO UPDATE SET value = excluded.value",
                            (self.site, repr(time.time())))
        except StateError as exc:
            return [str(exc)]
        return []

    # -- the pulse, and small named values ---------------------------------------

    def pulse(self) -> Pulse:
        with self._cursor() as cur:
            cur.execute(
                "SELECT c.version, c.key,"
                " (SELECT min(next_due) FROM reqcron_tasks WHERE site = %(s)s),"
                " (SELECT min(run_requested) FROM reqcron_tasks WHERE site = %(s)s),"
                " (SELECT value FROM reqcron_meta WHERE site = %(s)s AND key = %(k)s),"
                " (SELECT min(due) FROM reqcron_runs WHERE site = %(s)s AND status = 'queued')"
                " FROM reqcron_catalog c WHERE c.site = %(s)s",
                {"s": self.site, "k": CLOCK_KEY},
            )
            version, key, next_due, requested, clock, call_due = cur.fetchone()  # type: ignore[misc]
        return Pulse(version, key, next_due, requested, float(clock) if clock else None,
                     call_due)

    def meta(self, key: str) -> str | None:
        with self._cursor() as cur:
            cur.execute("SELECT value FROM reqcron_meta WHERE site = %s AND key = %s",
                        (self.site, key))
            row = cur.fetchone()
        return row[0] if row else None

    def init_meta(self, key: str, value: str) -> str:
        with self._cursor(write=True) as cur:
            cur.execute("INSERT INTO reqcron_meta VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.site, key, value))
            cur.execute("SELECT value FROM reqcron_meta WHERE site = %s AND key = %s",
                        (self.site, key))
            return str(cur.fetchone()[0])  # type: ignore[index]

    def set_meta(self, key: str, value: str) -> None:
        with self._cursor() as cur:
            cur.execute("INSERT INTO reqcron_meta VALUES (%s, %s, %s) ON CONFLICT (site, key)"
                        " DO UPDATE SET value = excluded.value", (self.site, key, value))

    # -- the catalog -----------------------------------------------------------------

    def catalog(self) -> CatalogRow:
        with self._cursor() as cur:
            cur.execute("SELECT version, key, data, reading_key, reading_until FROM"
                        " reqcron_catalog WHERE site = %s", (self.site,))
            row = cur.fetchone()
        assert row is not None
        return CatalogRow(*row)

    def begin_read(self, key: str, now: float, until: float) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE reqcron_catalog SET reading_key = %s, reading_until = %s WHERE site = %s"
                " AND key IS DISTINCT FROM %s AND (reading_key IS DISTINCT FROM %s"
                " OR reading_until < %s)",
                (key, until, self.site, key, key, now),
            )
            return cur.rowcount == 1

    def save_catalog(self, key: str, data: str, syncs: list[TaskSync], removed: list[str],
                     now: float) -> int:
        with self._cursor(write=True) as cur:
            cur.execute("UPDATE reqcron_catalog SET version = version + 1, key = %s, data = %s,"
                        " reading_key = NULL, reading_until = NULL WHERE site = %s"
                        " RETURNING version", (key, _text(data), self.site))
            version = int(cur.fetchone()[0])  # type: ignore[index]
            for s in syncs:
                cur.execute(
                    "INSERT INTO reqcron_tasks (site, name, next_due, anchor, enabled, signature,"
                    " first_seen) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (site, name)"
                    " DO UPDATE SET next_due = excluded.next_due, signature = excluded.signature"
                    " WHERE reqcron_tasks.signature IS DISTINCT FROM excluded.signature",
                    (self.site, s.name, s.next_due, s.anchor, s.enabled, s.signature, now),
                )
            for name in removed:
                cur.execute("UPDATE reqcron_tasks SET next_due = NULL, signature = %s WHERE"
                            " site = %s AND name = %s AND signature IS DISTINCT FROM %s",
                            (REMOVED, self.site, name, REMOVED))
            return version

    # -- schedule positions ------------------------------------------------------------

    def states(self) -> dict[str, TaskState]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_TASK_COLUMNS} FROM reqcron_tasks WHERE site = %s",
                        (self.site,))
            rows = cur.fetchall()
        return {row[0]: TaskState(*row) for row in rows}

    def state(self, name: str) -> TaskState | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_TASK_COLUMNS} FROM reqcron_tasks WHERE site = %s AND name = %s",
                        (self.site, name))
            row = cur.fetchone()
        return TaskState(*row) if row else None

    def due_states(self, now: float) -> list[TaskState]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_TASK_COLUMNS} FROM reqcron_tasks WHERE site = %s"
                        " AND (next_due <= %s OR run_requested <= %s)", (self.site, now, now))
            rows = cur.fetchall()
        return [TaskState(*row) for row in rows]

    def claim_slot(self, name: str, expected: float, signature: str,
                   new_next_due: float | None, run: Run, merge: bool = False,
                   clock: float | None = None) -> int | None:
        with self._cursor(write=True) as cur:
            # The row stays locked until commit: another host's claim waits, then
            # finds next_due moved and claims nothing.
            cur.execute("UPDATE reqcron_tasks SET next_due = %s WHERE site = %s AND name = %s"
                        " AND next_due = %s AND signature = %s",
                        (new_next_due, self.site, name, expected, signature))
            if cur.rowcount != 1:
                return None
            if clock is not None:
                cur.execute("INSERT INTO reqcron_meta VALUES (%s, %s, %s) ON CONFLICT"
                            " (site, key) DO UPDATE SET value = excluded.value",
                            (self.site, CLOCK_KEY, repr(clock)))
            return self._record(cur, run, merge)

    def reposition(self, name: str, expected: float | None, signature: str,
                   new_next_due: float | None) -> bool:
        with self._cursor() as cur:
            cur.execute("UPDATE reqcron_tasks SET next_due = %s WHERE site = %s AND name = %s"
                        " AND next_due IS NOT DISTINCT FROM %s AND signature = %s",
                        (new_next_due, self.site, name, expected, signature))
            return cur.rowcount == 1

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        with self._cursor(write=True) as cur:
            cur.execute("UPDATE reqcron_tasks SET run_requested = NULL WHERE site = %s"
                        " AND name = %s AND run_requested = %s", (self.site, name, requested))
            return self._record(cur, run) if cur.rowcount == 1 else None

    def request_run(self, name: str, now: float) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE reqcron_tasks SET run_requested = COALESCE(run_requested, %s)"
                        " WHERE site = %s AND name = %s", (now, self.site, name))

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE reqcron_tasks SET enabled = %s WHERE site = %s AND name = %s",
                        (enabled, self.site, name))

    # -- history ------------------------------------------------------------------

    def add_run(self, run: Run, merge: bool = False) -> int:
        with self._cursor(write=True) as cur:
            return self._record(cur, run, merge)

    def _record(self, cur: psycopg.Cursor[Any], run: Run, merge: bool = False) -> int:
        if merge:
            cur.execute("SELECT id, status, error FROM reqcron_runs WHERE site = %s AND task = %s"
                        " ORDER BY id DESC LIMIT 1", (self.site, run.task))
            last = cur.fetchone()
            if last is not None and (last[1], last[2]) == (run.status, _capped("error", run.error)):
                cur.execute('UPDATE reqcron_runs SET slots = slots + %s, slot = %s, "end" = %s'
                            " WHERE id = %s", (run.slots, run.slot, run.end, last[0]))
                return int(last[0])
        names = ", ".join(f'"{c}"' for c in RUN_COLUMNS)
        marks = ", ".join("%s" for _ in RUN_COLUMNS)
        cur.execute(f"INSERT INTO reqcron_runs (site, {names}) VALUES (%s, {marks}) RETURNING id",
                    [self.site, *(_capped(c, getattr(run, c)) for c in RUN_COLUMNS)])
        return int(cur.fetchone()[0])  # type: ignore[index]

    def update_run(self, run_id: int, /, **values: Any) -> None:
        self._update(run_id, None, values)

    def update_run_if(self, run_id: int, expected: str, /, **values: Any) -> bool:
        return self._update(run_id, expected, values)

    def _update(self, run_id: int, status: str | None, values: dict[str, Any]) -> bool:
        check_run_fields(values)
        sets = ", ".join(f'"{k}" = %s' for k in values)
        where = "id = %s AND site = %s" + (" AND status = %s" if status is not None else "")
        params = [_capped(k, v) for k, v in values.items()] + [run_id, self.site]
        params += [status] if status is not None else []
        with self._cursor() as cur:
            cur.execute(f"UPDATE reqcron_runs SET {sets} WHERE {where}", params)
            return cur.rowcount == 1

    def get_run(self, run_id: int) -> Run | None:
        with self._cursor() as cur:
            cur.execute(_RUN_SELECT + " WHERE id = %s AND site = %s", (run_id, self.site))
            row = cur.fetchone()
        return run_from_row(row) if row else None

    def runs(self, name: str | None = None, limit: int = 50,
             statuses: tuple[str, ...] = (), *, before: int | None = None,
             after: int | None = None) -> list[Run]:
        where, params = ["site = %s"], [self.site]
        if name is not None:
            where.append("task = %s")
            params.append(name)
        if statuses:
            where.append("status = ANY(%s)")
            params.append(list(statuses))  # type: ignore[arg-type]
        if before is not None:
            where.append("id < %s")
            params.append(before)  # type: ignore[arg-type]
        if after is not None:
            where.append("id > %s")
            params.append(after)  # type: ignore[arg-type]
        order = "ASC" if after is not None else "DESC"
        with self._cursor() as cur:
            cur.execute(_RUN_SELECT + f" WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT %s",
                        [*params, limit])
            rows = cur.fetchall()
        runs = [run_from_row(r) for r in rows]
        return runs[::-1] if after is not None else runs

    def prune(self, name: str, keep: int) -> None:
        with self._cursor() as cur:
            cur.execute(
                "DELETE FROM reqcron_runs WHERE site = %(s)s AND task = %(t)s"
                f" AND status NOT IN {_OPEN} AND id <= (SELECT id FROM reqcron_runs"
                f" WHERE site = %(s)s AND task = %(t)s AND status NOT IN {_OPEN}"
                " ORDER BY id DESC LIMIT 1 OFFSET %(k)s)",
                {"s": self.site, "t": name, "k": keep},
            )

    def run_stats(self) -> RunStats:
        # REPEATABLE READ: both queries see one snapshot, as another host writes.
        with self._cursor(write=True) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute(_RUN_COUNTS, {"s": self.site})
            counts = cur.fetchall()
            cur.execute(_LATEST_RUNS, {"s": self.site})
            latest = cur.fetchall()
        return RunStats.from_rows(counts, latest)

    # -- deferred calls ------------------------------------------------------------

    def take_call(self, now: float, pid: int, lock: str) -> Run | None:
        with self._cursor() as cur:
            # SKIP LOCKED: processes taking at once each get another call, none waits.
            cur.execute(
                "UPDATE reqcron_runs SET status = 'running', start = %(n)s, pid = %(p)s,"
                ' lock = %(l)s, attempts = attempts + 1, "end" = NULL WHERE id = ('
                "SELECT id FROM reqcron_runs WHERE site = %(s)s AND status = 'queued'"
                " AND due <= %(n)s ORDER BY due, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " AND status = 'queued' RETURNING id, "
                + ", ".join(f'"{c}"' for c in RUN_COLUMNS),
                {"n": now, "p": pid, "l": lock, "s": self.site},
            )
            row = cur.fetchone()
        return run_from_row(row) if row else None

    def release_calls(self, ids: list[int], hold: float) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE reqcron_runs SET due = due - %s WHERE site = %s"
                        " AND status = 'queued' AND attempts = 0 AND id = ANY(%s)",
                        (hold, self.site, ids))

    def due_calls(self, now: float, limit: int) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT count(*) FROM (SELECT 1 FROM reqcron_runs WHERE site = %s"
                        " AND status = 'queued' AND due <= %s LIMIT %s) q",
                        (self.site, now, limit))
            return int(cur.fetchone()[0])  # type: ignore[index]

    def calls_running(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT count(*) FROM reqcron_runs WHERE site = %s AND status = 'running'"
                        " AND call IS NOT NULL", (self.site,))
            return int(cur.fetchone()[0])  # type: ignore[index]

    def prune_calls(self, before: float) -> int:
        with self._cursor() as cur:
            cur.execute('DELETE FROM reqcron_runs WHERE site = %s AND call IS NOT NULL'
                        f' AND "end" < %s AND status NOT IN {_OPEN}', (self.site, before))
            return cur.rowcount

    # -- locks that die with their holder -------------------------------------------

    def _locker_conn(self) -> psycopg.Connection:
        if self._pid != os.getpid():
            self._db  # noqa: B018 - forgets the parent's connections
        if self._locker is None or self._locker.closed:
            self._locker = self._connect()
            self._held = set()
        return self._locker

    def _try_lock(self, key: int) -> PgLock | None:
        pg = _driver()
        with self._lock:
            try:
                conn = self._locker_conn()
                won = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except pg.Error as exc:
                raise StateError(self.location, f"the database cannot be reached: "
                                 f"{_first(exc)}") from None
            if not (won and won[0]):
                return None
            self._held.add(key)
            return PgLock(self, key, f"pg:{key}", conn)

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

    def take_task_lock(self, name: str) -> Lock | None:
        return self._try_lock(_key(f"{self.site}\0task\0{name}"))

    def held_task_locks(self, names: list[str]) -> int:
        keys = [_key(f"{self.site}\0task\0{name}") & 0xFFFF_FFFF_FFFF_FFFF for name in names]
        with self._cursor() as cur:
            # A bigint advisory key shows in pg_locks as classid (high half), objid (low half).
            cur.execute("SELECT count(*) FROM pg_locks l JOIN unnest(%s::bigint[], %s::bigint[])"
                        " AS k(hi, lo) ON l.classid::bigint = k.hi AND l.objid::bigint = k.lo"
                        " WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
                        " AND l.database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())",
                        ([k >> 32 for k in keys], [k & 0xFFFF_FFFF for k in keys]))
            return int(cur.fetchone()[0])  # type: ignore[index]

    def take_run_lock(self) -> Lock:
        while True:
            lock = self._try_lock(int.from_bytes(os.urandom(8), "big", signed=True))
            if lock is not None:
                return lock

    def lock_alive(self, token: str) -> bool:
        if not token.startswith("pg:"):
            return False  # a lock of another kind of state: its holder is not here
        key = int(token[3:])
        with self._cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            won = cur.fetchone()
            if won and won[0]:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                return False
        return True

    def dump(self) -> Dump:
        with self._cursor() as cur:
            cur.execute("SELECT key, value FROM reqcron_meta WHERE site = %s", (self.site,))
            meta = dict(cur.fetchall())
            cur.execute(_RUN_SELECT + " WHERE site = %s ORDER BY id", (self.site,))
            rows = cur.fetchall()
        runs = [run_from_row(r) for r in rows]
        return Dump(meta, self.catalog(), list(self.states().values()), runs)

    def restore(self, dump: Dump) -> None:
        with self._cursor(write=True) as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM reqcron_tasks WHERE site = %(s)s UNION ALL"
                        " SELECT 1 FROM reqcron_runs WHERE site = %(s)s)", {"s": self.site})
            if cur.fetchone()[0]:  # type: ignore[index]
                raise StateError(self.location, "this site already has a state there; "
                                 "nothing was copied")
            for key, value in dump.meta.items():
                cur.execute("INSERT INTO reqcron_meta VALUES (%s, %s, %s) ON CONFLICT (site, key)"
                            " DO UPDATE SET value = excluded.value", (self.site, key, value))
            c = dump.catalog
            data = None if c.data is None else _text(c.data)
            cur.execute("UPDATE reqcron_catalog SET version = %s, key = %s, data = %s"
                        " WHERE site = %s", (c.version, c.key, data, self.site))
            for t in dump.tasks:
                cur.execute(
                    "INSERT INTO reqcron_tasks (site, name, next_due, anchor, enabled,"
                    " run_requested, signature, first_seen) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                    " %s)", (self.site, t.name, t.next_due, t.anchor, t.enabled,
                             t.run_requested, t.signature, t.first_seen))
            for run in dump.runs:
                self._record(cur, run)

    def connection_fds(self) -> tuple[int, ...]:
        return tuple(c.fileno() for c in (self._conn, self._locker)
                     if c is not None and not c.closed and self._pid == os.getpid())

    def set_aside(self) -> str | None:
        raise StateError(self.location, "a shared PostgreSQL state is not reset by reqcron; "
                         "every host uses it")

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._locker is not None and self._pid == os.getpid():
                self._locker.close()
            self._locker = None


def _close_in(pid: int, conn: psycopg.Connection) -> None:
    if os.getpid() == pid and not conn.closed:
        conn.close()


def _key(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big",
                          signed=True)


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL


def _capped(column: str, value: Any) -> Any:
    return capped_field(column, _text(value) if isinstance(value, str) else value)


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
