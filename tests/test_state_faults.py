"""State faults (issue 17): a run's outcome is never lost, every transition is conditional
on its attempt, a locked or dropped PostgreSQL session fails fast or reconnects.

Real runtask processes, real SQLite files held by another connection's
``BEGIN EXCLUSIVE``, the real PostgreSQL behind a TCP proxy that is cut
(faultproxy.py) or sessions ended with ``pg_terminate_backend``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import hello, request, wait_for, with_port

from reqcron import Docroot
from reqcron.engine import reaping
from reqcron.engine.outcomes import Written, record_end, replay
from reqcron.engine.spool import spool_dir, waiting
from reqcron.errors import ExitCode, StateError
from reqcron.records import Run, Status, Trigger
from reqcron.store import Attempt
from reqcron.store.postgres import PostgresStore
from reqcron.store.postgres_conn import went_away

#: A task that says when its run() is entered and returns once the test says go.
HELD = """
import os, time
from pathlib import Path
from reqcron import Task

HERE = Path(__file__).parent

class Held(Task):
    def run(self):
        (HERE / "entered").write_text(str(os.getpid()))
        while not (HERE / "go").exists():
            time.sleep(0.01)
        print("hello from the task")
        return 42
"""

#: A task module that waits at import (a slow start) while HOLD names a file not there yet.
SLOW_IMPORT = """
import os, time
from reqcron import Task

hold = os.environ.get("HOLD")
while hold and not os.path.exists(hold):
    time.sleep(0.01)

class Once(Task):
    def run(self):
        with open(os.path.join(os.path.dirname(__file__), "ran"), "a") as f:
            f.write("x")
"""


def start(root: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reqcron.runtask", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, cwd=root)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a runtask still running (a test that failed halfway), and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def terminate_sessions(pg_url: str) -> int:
    """End every other session on the test's database; return how many."""
    import psycopg

    name = urlsplit(pg_url).path.lstrip("/")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()
    return int(row[0]) if row else 0


def only_run(root: Path, task: str = "Held") -> Run:
    with Docroot(root) as doc:
        runs = doc.recent_runs(task)
    assert len(runs) == 1, runs
    return runs[0]


# -- a run's outcome is never lost -------------------------------------------------------


def test_an_outcome_written_while_sqlite_is_locked_waits_in_the_spool_and_lands_once(
        make_docroot):
    root = make_docroot(HELD)
    with Docroot(root) as doc:
        db_path, folder = Path(doc.store.location), spool_dir(doc.settings.state_dir)
    proc = start(root, str(root), "Held")
    blocker = None
    try:
        wait_for(lambda: (root / "entered").exists(), message="run() entered")
        # Another process holds the write lock past runtask's busy timeout (5 s).
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        (root / "go").touch()
        code, err = finish(proc)
        assert code == ExitCode.OK, err
        assert "kept in" in err
        kept = waiting(folder)
        assert [k.attempt.status for k in kept] == [Status.RUNNING]
        assert stat.S_IMODE(kept[0].path.stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        # While its outcome waits, the run (whose process is gone) is not recorded dead.
        with Docroot(root, busy_timeout=0.1) as doc:
            assert doc.reap() == 0
            assert doc.recent_runs("Held")[0].status == Status.RUNNING
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
        stop(proc)
    with Docroot(root) as doc:
        assert doc.reap() == 0
    run = only_run(root)
    assert (run.status, run.exit_code, run.return_value) == (Status.OK, 0, "42")
    assert "hello from the task" in (run.output or "")
    assert waiting(folder) == []


def _pg_docroot(make_docroot, url: str) -> Path:
    return make_docroot(HELD, f'[reqcron]\nstate = "{url}"\nsite = "shop"\n')


def test_an_outcome_written_across_a_cut_to_postgresql_lands_once_the_state_is_back(
        make_docroot, pg_url, proxy):
    root = _pg_docroot(make_docroot, with_port(pg_url, proxy.port))
    proc = start(root, str(root), "Held")
    try:
        wait_for(lambda: (root / "entered").exists(), message="run() entered")
        proxy.cut()
        (root / "go").touch()
        started = time.monotonic()
        code, err = finish(proc)
        assert code == ExitCode.OK, err
        assert time.monotonic() - started < 10
        assert "kept in" in err
        # Meanwhile a host that still reaches the database sees the run's lock gone with
        # its session, but its lease still running: it is not recorded dead.
        direct = PostgresStore(pg_url, "shop")
        try:
            assert reaping.reap(direct) == []
            assert [r.status for r in direct.runs("Held")] == [Status.RUNNING]
        finally:
            direct.close()
    finally:
        proxy.restore()
        stop(proc)
    with Docroot(root) as doc:
        doc.reap()
    run = only_run(root)
    assert (run.status, run.exit_code, run.return_value, run.error) == (Status.OK, 0, "42",
                                                                        None)
    assert "hello from the task" in (run.output or "")


def test_a_run_whose_sessions_were_terminated_records_its_outcome_on_a_new_one(
        make_docroot, pg_url):
    root = _pg_docroot(make_docroot, pg_url)
    proc = start(root, str(root), "Held")
    try:
        wait_for(lambda: (root / "entered").exists(), message="run() entered")
        assert terminate_sessions(pg_url) >= 1
        (root / "go").touch()
        code, err = finish(proc)
    finally:
        stop(proc)
    assert code == ExitCode.OK, err
    assert "kept in" not in err  # written at once, on a new connection
    run = only_run(root)
    assert (run.status, run.return_value) == (Status.OK, "42")


# -- every transition is conditional on the attempt it means --------------------------------


def test_a_late_starter_whose_run_was_recorded_lost_neither_runs_nor_adds_a_row(
        make_docroot):
    root = make_docroot(SLOW_IMPORT)
    with Docroot(root) as doc:
        doc.run_now("Once")
        (claim,) = doc.due()
        # Its process never reached the state: lost once the pending timeout passed.
        doc.store.update_run(claim.run_id, created=time.time() - reaping.PENDING_TIMEOUT - 1)
        assert doc.reap() == 1
    code, err = finish(start(root, "--run-id", str(claim.run_id), str(root), "Once"))
    assert code == ExitCode.NOT_RUN, err
    assert "recorded lost" in err
    assert not (root / "ran").exists()
    assert only_run(root, "Once").status == Status.LOST


def test_a_slow_starting_run_is_alive_to_the_reaper_past_the_pending_timeout(make_docroot):
    root = make_docroot(SLOW_IMPORT)
    hold = root / "hold"
    with Docroot(root) as doc:
        doc.run_now("Once")
        (claim,) = doc.due()
        doc.store.update_run(claim.run_id, created=time.time() - reaping.PENDING_TIMEOUT - 1)
    proc = start(root, "--run-id", str(claim.run_id), str(root), "Once", HOLD=str(hold))
    try:
        with Docroot(root) as doc:
            # It took its row (its lock is named there) and now imports slowly.
            wait_for(lambda: doc.get_run(claim.run_id).lock, message="the row taken")
            assert doc.reap() == 0
            assert doc.get_run(claim.run_id).status == Status.PENDING
        hold.touch()
        code, err = finish(proc)
    finally:
        stop(proc)
    assert code == ExitCode.OK, err
    assert (root / "ran").read_text() == "x"
    assert only_run(root, "Once").status == Status.OK


def test_a_reaper_finds_a_pending_run_whose_process_took_it_and_died(make_docroot):
    root = make_docroot(SLOW_IMPORT)
    with Docroot(root) as doc:
        doc.run_now("Once")
        (claim,) = doc.due()
    proc = start(root, "--run-id", str(claim.run_id), str(root), "Once", HOLD=str(root / "no"))
    with Docroot(root) as doc:
        wait_for(lambda: doc.get_run(claim.run_id).lock, message="the row taken")
        proc.kill()
        proc.communicate()
        assert doc.reap() == 1
        run = doc.get_run(claim.run_id)
    assert (run.status, run.error) == (Status.LOST, "its process died before starting the run")


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request, tmp_path: Path) -> Iterator[PostgresStore]:
    if request.param == "postgres":
        store = PostgresStore(request.getfixturevalue("pg_url"), "s")
    else:
        from reqcron.store import SQLiteStore

        store = SQLiteStore(tmp_path / "s" / "state.db")  # type: ignore[assignment]
    yield store
    store.close()


def test_a_spooled_end_corrects_a_reapers_wrong_verdict_and_replays_once(any_store, tmp_path):
    store = any_store
    run_id = store.add_run(Run(task="t", trigger=Trigger.MANUAL, status=Status.RUNNING,
                               created=1.0, start=1.0, lock="gone"))
    attempt = Attempt.of(store.get_run(run_id))
    values = {"status": Status.OK, "end": 2.0, "exit_code": 0, "return_value": "7"}
    folder = tmp_path / "spool"
    from reqcron.engine import spool

    spool.keep(folder, attempt, values)
    spool.keep(folder, attempt, values)  # twice: written once
    assert [r.id for r in reaping.reap(store)] == [run_id]  # no spool seen: taken for dead
    assert replay(store, folder) == 1
    run = store.get_run(run_id)
    assert (run.status, run.end, run.return_value, run.error) == (Status.OK, 2.0, "7", None)
    assert replay(store, folder) == 0
    # A retry of a write that got through, its answer lost, is recorded, not refused.
    assert record_end(store, attempt, values, None) == Written.RECORDED
    # Another attempt's end is refused.
    assert record_end(store, Attempt(run_id, Status.RUNNING, "other"), values,
                      None) == Written.REFUSED


# -- PostgreSQL: fail fast on a locked table, reconnect a dropped session ---------------------


def test_a_table_locked_by_another_session_fails_a_call_within_its_budget(pg_url):
    import psycopg

    store = PostgresStore(pg_url, "shop", busy_timeout=0.1)
    holder = psycopg.connect(pg_url)
    try:
        store.pulse()
        holder.execute("LOCK TABLE reqcron_runs IN ACCESS EXCLUSIVE MODE")
        for call in (store.pulse, lambda: store.get_run(1), lambda: store.add_run(
                Run(task="t", trigger=Trigger.MANUAL, status=Status.OK, created=1.0))):
            started = time.monotonic()
            with pytest.raises(StateError, match="busy: canceling statement due to lock"):
                call()
            assert time.monotonic() - started < 0.5
        holder.rollback()
        assert store.get_run(1) is None  # usable again at once
    finally:
        holder.close()
        store.close()


def test_a_terminated_idle_session_is_replaced_at_once_without_failing_the_caller(pg_url):
    store = PostgresStore(pg_url, "shop")
    try:
        store.pulse()
        assert terminate_sessions(pg_url) == 1
        # The server's goodbye reaches the idle socket.
        wait_for(lambda: went_away(store._conn), timeout=2, message="the goodbye")
        run_id = store.add_run(Run(task="t", trigger=Trigger.MANUAL, status=Status.OK,
                                   created=1.0))
        assert store.get_run(run_id) is not None
    finally:
        store.close()


def test_a_cut_connection_fails_fast_and_the_next_use_after_restore_works(pg_url, proxy):
    store = PostgresStore(with_port(pg_url, proxy.port), "shop", busy_timeout=0.1)
    try:
        store.pulse()
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(StateError):
            store.pulse()
        assert time.monotonic() - started < 1.5
        proxy.restore()
        store.pulse()
    finally:
        store.close()


# -- liveness survives a lost session (PostgreSQL) ----------------------------------------


def test_a_run_holds_its_lock_again_after_its_sessions_were_terminated(make_docroot, pg_url):
    root = _pg_docroot(make_docroot, pg_url)
    proc = start(root, str(root), "Held")
    other = PostgresStore(pg_url, "shop")
    try:
        wait_for(lambda: (root / "entered").exists(), message="run() entered")
        (run,) = other.runs("Held")
        assert run.lock and other.lock_alive(run.lock)
        # This test's own look goes on a new session: one ended under it, before its
        # goodbye reached the socket, would fail that one look (the next works).
        other.close()
        assert terminate_sessions(pg_url) >= 2  # its query and lock sessions
        # Within about a second (supervise's tick) the run holds its lock again...
        wait_for(lambda: other.lock_alive(run.lock), timeout=30, interval=0.05,
                 message="the lock held again")
        # ...so another host's reaper leaves the live run alone.
        assert reaping.reap(other) == []
        (root / "go").touch()
        code, err = finish(proc)
    finally:
        other.close()
        stop(proc)
    assert code == ExitCode.OK, err
    assert only_run(root).status == Status.OK


def test_a_quiet_worker_lets_go_of_its_postgresql_session_and_takes_a_new_one(
        make_docroot, pg_url, middleware, monkeypatch):
    import psycopg

    from reqcron.web import tender

    monkeypatch.setattr(tender, "IDLE_CLOSE", 0.5)
    root = make_docroot("", f'[reqcron]\nstate = "{pg_url}"\nsite = "shop"\n')
    name = urlsplit(pg_url).path.lstrip("/")

    def sessions() -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                               " AND application_name = 'reqcron'", (name,)).fetchone()
        return int(row[0]) if row else 0

    app = middleware(hello, root)
    wait_for(lambda: request(app)[0] == "200 OK" and sessions() >= 1, timeout=15,
             message="the worker's session")
    wait_for(lambda: sessions() == 0, timeout=15, message="the quiet worker to let go")
    assert request(app)[0] == "200 OK"
    wait_for(lambda: request(app)[0] == "200 OK" and sessions() >= 1, timeout=15,
             message="a new session at the next look")


def test_a_run_cut_off_from_postgresql_is_neither_reaped_nor_run_beside(
        make_docroot, pg_url, proxy):
    """Its lock went with its session; its lease keeps it alive for every other host."""
    root = _pg_docroot(make_docroot, with_port(pg_url, proxy.port))
    other = _pg_docroot(make_docroot, pg_url)  # another host, reaching the database
    (other / "__tasks__.py").write_text((root / "__tasks__.py").read_text())
    proc = start(root, str(root), "Held")
    try:
        wait_for(lambda: (root / "entered").exists(), message="run() entered")
        proxy.cut()  # its sessions end: its advisory locks are free on the server
        direct = PostgresStore(pg_url, "shop")
        try:
            wait_for(lambda: not any(direct.lock_alive(r.lock or "")
                                     for r in direct.runs("Held")),
                     message="the run's lock gone with its session")
            assert reaping.reap(direct) == []
        finally:
            direct.close()
        beside = subprocess.run([sys.executable, "-m", "reqcron.runtask", str(other), "Held"],
                                cwd=other, capture_output=True, text=True, timeout=60)
        assert beside.returncode == ExitCode.NOT_RUN, beside.stderr
        assert not (other / "entered").exists()
        proxy.restore()
        (root / "go").touch()
        code, err = finish(proc)
        assert code == ExitCode.OK, err
    finally:
        proxy.restore()
        stop(proc)
    with Docroot(root) as doc:
        doc.reap()
        runs = doc.history("Held")
    assert [r.status for r in runs].count(Status.OK) == 1
    assert [r.status for r in runs].count(Status.SKIPPED) == 1  # the one not run beside
