"""A PostgreSQL connection for a store: the driver, keepalives both ways, and the schema.

A connection is opened with a short connect timeout and TCP keepalives set
for both ends, so the server ends the session of a host that lost power
within KEEPALIVE_BOUND seconds (and with it that host's advisory locks).
"""

from __future__ import annotations

import os
import select
import weakref
from urllib.parse import urlsplit, urlunsplit

from ..errors import StateError
from .sql import Schema

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    import psycopg

CONNECT_TIMEOUT = 3  # seconds: an unreachable database costs a check this long, never a request
KEEPALIVE = (10, 5, 3)  # idle, interval, count: a dead peer's session ends within ~25 s
KEEPALIVE_BOUND = KEEPALIVE[0] + KEEPALIVE[1] * KEEPALIVE[2]
# Milliseconds data sent may stay unacknowledged before the connection is given up: a
# black-holed route fails a statement instead of hanging it through the kernel's ~15
# minutes of retransmissions (keepalives only cover an idle connection).
TCP_USER_TIMEOUT = 15_000
# A statement may run this many times the store's lock wait (its busy timeout), at least
# STATEMENT_FLOOR seconds: 1 s on a request's path (0.1 s), 10 s elsewhere (5 s).
STATEMENT_FACTOR = 2.0
STATEMENT_FLOOR = 1.0
# What making the schema may wait for (other hosts' sessions hold the tables).
SCHEMA_TIMEOUT = "30s"
_SCHEMA_LOCK = 0x7265716372_6F6E  # pg_advisory_xact_lock key while the schema is made
SCHEMA = Schema(3, """
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
    slots integer NOT NULL DEFAULT 1,
    call text, attempts integer NOT NULL DEFAULT 0, due double precision, notified text,
    lease double precision
);
CREATE INDEX IF NOT EXISTS reqcron_runs_by_task ON reqcron_runs (site, task, id);
CREATE INDEX IF NOT EXISTS reqcron_runs_open ON reqcron_runs (site, status)
    WHERE status IN ('pending', 'running');
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
""", {
    # What brings a state of each older version to the next one (IF NOT EXISTS: two
    # hosts may both find the old version, and the second to take the lock finds it done).
    1: ["ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS call text",
        "ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0",
        "ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS due double precision",
        "ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS notified text"],
    2: ["ALTER TABLE reqcron_runs ADD COLUMN IF NOT EXISTS lease double precision"],
})


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


def driver(location: str) -> Any:
    """The psycopg module, or a StateError naming the state at ``location`` (its URL,
    redacted) and the extra that installs it."""
    try:
        import psycopg
    except ImportError:
        raise StateError(location, "a PostgreSQL state needs psycopg: pip install "
                         "'reqcron[postgres]'") from None
    return psycopg


def first(exc: BaseException) -> str:
    """The first line of a driver error: what went wrong, without the context."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def unreachable(location: str, exc: BaseException) -> StateError:
    return StateError(location, f"the database cannot be reached: {first(exc)}")


def statement_timeout(busy_timeout: float) -> float:
    """How long one statement may take, for a store waiting ``busy_timeout`` on locks."""
    return max(STATEMENT_FLOOR, STATEMENT_FACTOR * busy_timeout)


def connect(url: str, timeout: float, location: str, owner: object,
            busy_timeout: float = 5.0) -> psycopg.Connection:
    """An autocommit connection, closed with ``owner`` by the process that opened it.

    Its statements wait at most ``busy_timeout`` for a lock (``lock_timeout``,
    as SQLite's busy timeout) and run at most ``statement_timeout()``: a table
    locked by another session fails a call fast instead of hanging it.
    """
    pg = driver(location)
    idle, interval, count = KEEPALIVE
    locks = max(1, round(busy_timeout * 1000))
    statements = max(1, round(statement_timeout(busy_timeout) * 1000))
    try:
        conn: psycopg.Connection = pg.connect(
            url, autocommit=True, connect_timeout=max(1, int(timeout)),
            keepalives=1, keepalives_idle=idle, keepalives_interval=interval,
            keepalives_count=count, tcp_user_timeout=TCP_USER_TIMEOUT,
            application_name="reqcron",
            # The server's side too: it ends the session of a host that lost power.
            options=f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval}"
                    f" -c tcp_keepalives_count={count}"
                    f" -c lock_timeout={locks} -c statement_timeout={statements}",
        )
    except pg.Error as exc:
        raise unreachable(location, exc) from None
    # Closed with the store, but only by the process that opened it: a
    # forked child closing it would end its parent's session.
    weakref.finalize(owner, _close_in, os.getpid(), conn)
    return conn


def ensure_schema(conn: psycopg.Connection, site: str, location: str) -> None:
    """Create or migrate the schema (one host at a time), and the site's catalog row."""
    pg = driver(location)
    try:
        row = conn.execute("SELECT max(version) FROM reqcron_schema").fetchone()
        version = row[0] if row else None
    except pg.errors.UndefinedTable:
        version = None
    try:
        steps = SCHEMA.steps(version)
    except ValueError as exc:
        raise StateError(location, str(exc)) from None
    if steps:
        with conn.transaction():  # two hosts starting at once: one makes it
            # DDL waits for every session using the tables: not a request's short wait.
            conn.execute(f"SET LOCAL lock_timeout = '{SCHEMA_TIMEOUT}'")
            conn.execute(f"SET LOCAL statement_timeout = '{SCHEMA_TIMEOUT}'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in steps:
                conn.execute(statement)
            conn.execute("DELETE FROM reqcron_schema")
            conn.execute("INSERT INTO reqcron_schema VALUES (%s)", (SCHEMA.version,))
    conn.execute("INSERT INTO reqcron_catalog (site, version) VALUES (%s, 0)"
                 " ON CONFLICT DO NOTHING", (site,))


def went_away(conn: psycopg.Connection) -> bool:
    """Tell whether an idle connection's session ended (terminated, timed out, cut).

    An idle autocommit session is sent nothing unasked; a socket readable
    now holds the server's goodbye (or EOF).  One poll, no round trip.
    """
    if conn.closed:
        return True
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _close_in(pid: int, conn: psycopg.Connection) -> None:
    if os.getpid() == pid and not conn.closed:
        conn.close()
