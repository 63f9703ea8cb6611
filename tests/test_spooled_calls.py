"""A request is never failed by the state: a call deferred while the state cannot take it
waits in the host's spool (``Result.status == "spooled"``), is stored once when the state
is back, and the same Result then follows it to its outcome.

The state is made unreachable for real: SQLite held by another connection's
``BEGIN EXCLUSIVE`` past the request path's busy timeout, or PostgreSQL behind a TCP
proxy that is cut (faultproxy.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import hello, request, wait_for, with_port
from faultproxy import FaultProxy

from reqcron import Docroot
from reqcron.engine import call_spool
from reqcron.engine.spool import spool_dir

JOBS = """\
from reqcron import delay

@delay
def add(a, b):
    return a + b
"""


@contextmanager
def sqlite_locked(root: Path) -> Iterator[None]:
    """Hold the DOCROOT's SQLite state with an exclusive transaction of another connection."""
    with Docroot(root) as doc:
        db_path = doc.state_location
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def waiting(state_dir: Path) -> list[Path]:
    """The calls waiting in the host's spool: for an enqueuer (.json) or still in flight."""
    return [p for p in spool_dir(state_dir).glob("call-*") if p.suffix in (".json", ".pending")]


def stored_ids(root: Path, token: str | None) -> list[int]:
    """The ids of the stored calls that carry ``token``: one, whoever stored it."""
    with Docroot(root) as doc:
        return [r.id for r in doc.history(limit=500)
                if r.call is not None and json.loads(r.call).get("token") == token]


def deferring_app(mod: Any, results: list[Any]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        results.append(mod.add(2, 3))
        return hello(environ, start_response)

    return app


def check_spooled_then_run(mw: Any, results: list[Any], root: Path, state_dir: Path,
                           cut: Callable[[], Any]) -> None:
    with cut():
        began = time.monotonic()
        assert request(mw)[0] == "200 OK"
        took = time.monotonic() - began
        result = results[-1]
        assert result.status == "spooled" and result.id is None
        assert took < 3.0, f"the deferring request took {took:.2f} s"
        kept = waiting(state_dir)
        assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    # The state is back: the next requests tend the site, which stores the call once.
    wait_for(lambda: request(mw)[0] == "200 OK" and result.id is not None, timeout=20,
             interval=0.1, message="the spooled call stored")
    assert result.wait(30).result == 5
    assert waiting(state_dir) == []
    assert stored_ids(root, result._token) == [result.id]  # stored once, not twice


def test_a_call_deferred_while_sqlite_is_locked_is_spooled_then_runs_once(
        make_docroot, app_module, middleware, monkeypatch):
    root = make_docroot("")
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    results: list[Any] = []
    mw = middleware(deferring_app(app_module(JOBS), results), root)
    assert request(mw)[0] == "200 OK"  # the state exists, the site is tended
    assert results[0].wait(30).result == 5
    with Docroot(root) as doc:
        state_dir = doc.settings.state_dir
    check_spooled_then_run(mw, results, root, state_dir, lambda: sqlite_locked(root))


def behind_proxy(make_docroot: Any, app_module: Any, middleware: Any, monkeypatch: Any,
                 pg_url: str, proxy: FaultProxy) -> tuple[Any, list[Any], Path, Path]:
    """A site on PostgreSQL through ``proxy`` under a deferring app, its first call run:
    (the middleware, the Results of its calls, the DOCROOT, the host's state_dir)."""
    url = with_port(pg_url, proxy.port)
    root = make_docroot("", f'[reqcron]\nstate = "{url}"\nsite = "shop"\n')
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    results: list[Any] = []
    mw = middleware(deferring_app(app_module(JOBS), results), root)
    assert request(mw)[0] == "200 OK"
    assert results[0].wait(30).result == 5
    with Docroot(root) as doc:
        state_dir = doc.settings.state_dir
    return mw, results, root, state_dir


def test_a_call_deferred_while_postgresql_is_cut_off_is_spooled_then_runs_once(
        make_docroot, app_module, middleware, monkeypatch, pg_url, proxy: FaultProxy):
    mw, results, root, state_dir = behind_proxy(make_docroot, app_module, middleware,
                                                 monkeypatch, pg_url, proxy)

    @contextmanager
    def cut() -> Iterator[None]:
        proxy.cut()
        yield
        proxy.restore()

    check_spooled_then_run(mw, results, root, state_dir, cut)


def test_a_request_deferring_while_postgresql_stalls_answers_within_its_budget(
        make_docroot, app_module, middleware, monkeypatch, pg_url, proxy: FaultProxy):
    """A database that stops answering (connections open, nothing forwarded) holds no
    request: each deferring request waits ~0.1 s at most, its call kept in flight in the
    spool; when the database answers again the late write lands, and each call runs once."""
    mw, results, root, state_dir = behind_proxy(make_docroot, app_module, middleware,
                                                 monkeypatch, pg_url, proxy)

    proxy.stall()
    try:
        took = []
        for _ in range(3):
            began = time.monotonic()
            assert request(mw)[0] == "200 OK"
            took.append(time.monotonic() - began)
        late = results[1:]
        assert [r.status for r in late] == ["spooled"] * 3
        # 0.1 s each, with room for a busy machine; stuck, it would be the TCP timeout.
        assert max(took) < 1.0, f"deferring requests took {took} s while the state stalled"
        assert len(waiting(state_dir)) == 3
    finally:
        proxy.restore()
    # The writes stuck in flight end now: stored once each, and the Results follow them.
    assert [r.wait(60).result for r in late] == [5, 5, 5]
    assert waiting(state_dir) == []
    for result in late:
        assert stored_ids(root, result._token) == [result.id]


def test_a_call_in_flight_of_a_process_that_died_is_stored_once_by_an_enqueuer(
        make_docroot):
    """A call kept in flight stays its process's while that lives; once it is dead (and its
    last statement surely done) an enqueuer stores it, once, also if the late write landed."""
    import os
    import subprocess
    import sys

    from reqcron.engine.stored_calls import Call, new_run

    root = make_docroot("")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with Docroot(root) as doc:
        state_dir = doc.settings.state_dir
        calls = {name: Call("jobs:add", [1, 2], {}, token=name * 32) for name in "abc"}
        for call in calls.values():
            call_spool.keep(state_dir, call.token or "", new_run(call, 1.0, 1.0), in_flight=True)
        # a: its process (this one) lives: left to it.  b, c: their process is dead, and
        # past the settling time; c's late write had landed before it died.
        for name in "bc":
            path = spool_dir(state_dir) / f"call-{name * 32}.pending"
            data = json.loads(path.read_text())
            data["pid"] = int(dead.stdout)
            path.write_text(json.dumps(data))
            old = time.time() - call_spool.SETTLE - 1
            os.utime(path, (old, old))
        landed = doc.store.add_run(new_run(calls["c"], 1.0, 1.0))
        assert call_spool.enqueue(state_dir, doc.store) == 1  # b only: c was stored already
        assert call_spool.is_waiting(state_dir, "a" * 32)
        assert call_spool.stored_id(state_dir, "a" * 32) is None
        assert call_spool.stored_id(state_dir, "c" * 32) == landed
        b_id = call_spool.stored_id(state_dir, "b" * 32)
        assert b_id is not None and b_id != landed
        tokens = sorted(json.loads(r.call or "{}").get("token", "")[:1]
                        for r in doc.history(limit=10) if r.call is not None)
        assert tokens == ["b", "c"]


def test_a_spooled_call_is_stored_once_even_by_two_enqueuers(make_docroot, tmp_path):
    """Two processes' worth of enqueuers racing over one spool store the call once."""
    from reqcron.engine.stored_calls import Call, new_run

    root = make_docroot("")
    with Docroot(root) as doc:
        state_dir = doc.settings.state_dir
        call = Call("jobs:add", [1, 2], {}, token="t" * 32)
        call_spool.keep(state_dir, call.token or "", new_run(call, 1.0, 1.0))
        # The first enqueuer stored it but died before removing the file.
        run_id = doc.store.add_run(new_run(call, 1.0, 1.0))
        assert call_spool.enqueue(state_dir, doc.store) == 0  # found stored: not again
        assert call_spool.stored_id(state_dir, "t" * 32) == run_id
        assert not call_spool.is_waiting(state_dir, "t" * 32)
        assert len([r for r in doc.history(limit=10) if r.call is not None]) == 1


def test_a_database_out_of_connections_costs_requests_nothing_and_loses_no_call(
        make_docroot, app_module, middleware, monkeypatch, pg_url, caplog):
    """max_connections reached (here: the site's role at its CONNECTION LIMIT): requests
    answer at once, the log says why, no task process is started while nothing can
    connect, and every call deferred meanwhile runs once when connections are back."""
    import logging
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from conftest import processes

    role = f"reqcron_limited_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(pg_url)
    url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    database = parts.path.lstrip("/")

    def admin(*statements: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    admin(f'CREATE ROLE "{role}" LOGIN', f'GRANT ALL ON DATABASE "{database}" TO "{role}"',
          f'GRANT ALL ON SCHEMA public TO "{role}"')
    try:
        root = make_docroot("", f'[reqcron]\nstate = "{url}"\nsite = "shop"\n')
        monkeypatch.setenv("REQCRON_DOCROOT", str(root))
        results: list[Any] = []
        mw = middleware(deferring_app(app_module(JOBS), results), root)
        assert request(mw)[0] == "200 OK"
        assert results[0].wait(30).result == 5
        wait_for(lambda: not processes("reqcron.runtask", str(root)), timeout=30,
                 message="the first call's task process to end")

        # No new session for the role, and its open ones ended: every process must
        # reconnect, and is refused ("too many connections for role").
        admin(f'ALTER ROLE "{role}" CONNECTION LIMIT 0',
              f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        with caplog.at_level(logging.WARNING, logger="reqcron"):
            took, started = [], set()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                began = time.monotonic()
                assert request(mw)[0] == "200 OK"
                took.append(time.monotonic() - began)
                started.update(processes("reqcron.runtask", str(root)))
                time.sleep(0.05)
        late = results[1:]
        assert late and all(r.status == "spooled" for r in late)
        assert max(took) < 1.0, f"a request took {max(took):.2f} s with no connection to get"
        assert not started, "a task process was started while none could connect"
        assert any("too many connections" in r.getMessage() for r in caplog.records), \
            [r.getMessage() for r in caplog.records]

        admin(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        wait_for(lambda: request(mw)[0] == "200 OK" and all(r.id is not None for r in late),
                 timeout=30, interval=0.1, message="the spooled calls stored")
        assert [r.wait(60).result for r in late] == [5] * len(late)
        for result in late:
            assert stored_ids(root, result._token) == [result.id]
    finally:
        admin(f'ALTER ROLE "{role}" CONNECTION LIMIT 0',
              f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')  # type: ignore[arg-type]
        admin(f'DROP ROLE "{role}"')
