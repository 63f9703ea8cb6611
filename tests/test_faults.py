"""Faults: a tasks file that exits, loops, forks or floods at import; a state that is
deleted, read-only, damaged or unusable.  The site keeps serving through all of them,
says what is wrong once, and picks up again without a restart once it is fixed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import drive, hello, popen, processes, reqcron_cmd, request, wait_for
from realserver import BIN, Server

from reqcron import Docroot, ReqCron
from reqcron.errors import StateError
from reqcron.limits import ERROR_LIMIT
from reqcron.store.sqlite import SQLiteStore

#: The read time limit the servers and commands of these tests use (READ_TIMEOUT).
READ_TIMEOUT = 2.0

GOOD = """
from reqcron import Task

class Hourly(Task):
    every = 3600
"""

TICK = """
from reqcron import Task

class Tick(Task):
    every = 1
    overlap = True
"""

APP = """
import os
from reqcron import ReqCron

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]

application = ReqCron(hello, {docroot!r}, poll=0.2)
"""

# name: (appended to GOOD, text the load error must contain or None, exit code of check)
FAULTS: dict[str, tuple[str, str | None, int]] = {
    "exit": ("import os\nos._exit(3)\n", "exited with code 3", 2),
    "loop": ("while True:\n    pass\n", f"took longer than {READ_TIMEOUT:g} s", 2),
    "fork": ("import os\nos.fork()\n", "forked at import", 2),
    # 100 MB printed (50 on stdout, 50 on stderr), then a file that loads: nothing is
    # wrong with its tasks, so it loads (a new task shows it was read), and the output
    # goes nowhere.
    "flood": (
        "import os, sys\n"
        "for _ in range(50):\n"
        "    print('x' * (1 << 20))\n"
        "    sys.stderr.write('x' * (1 << 20))\n"
        "class Extra(Task):\n"
        "    every = 3600\n",
        None,
        0,
    ),
    # 50 MB printed, then an error whose message is itself 20 MB.
    "flood-error": (
        "import sys\n"
        "for _ in range(50):\n"
        "    print('x' * (1 << 20))\n"
        "raise RuntimeError('x' * (20 << 20))\n",
        "RuntimeError: xxxx",
        2,
    ),
}


@pytest.fixture(autouse=True)
def short_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers and commands started by a test inherit a short read time limit."""
    monkeypatch.setenv("REQCRON_READ_TIMEOUT", str(READ_TIMEOUT))


# -- helpers ----------------------------------------------------------------------


def replace(path: Path, source: str) -> None:
    """Replace a file atomically: no reader ever sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(textwrap.dedent(source))
    os.replace(tmp, path)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return bytes(resp.read())


def workers(server: Server) -> set[int]:
    """The pids of the master's direct children: gunicorn's workers."""
    return {pid for pid, ppid, _ in server.descendants() if ppid == server.proc.pid}


def stored_catalog(root: Path) -> dict[str, Any] | None:
    """The catalog as the site's state keeps it, read without reading the files."""
    doc = Docroot(root)
    try:
        row = doc.store.catalog()
    finally:
        doc.close()
    return json.loads(row.data) if row.data else None


def runs(root: Path, task: str = "Tick") -> list[Any]:
    """The runs of ``task`` in the state as it is now ([] while it cannot be read)."""
    doc = Docroot(root)
    try:
        return doc.store.runs(task, 1000)
    except StateError:
        return []
    finally:
        doc.close()


def peek_runs(db: Path) -> list[tuple[Any, ...]]:
    """The runs in a state.db that no process may change now (read without a -shm)."""
    with sqlite3.connect(f"file:{db}?immutable=1", uri=True) as conn:
        rows = conn.execute("SELECT id, task, status FROM runs").fetchall()
    conn.close()
    return rows


def ok_runs(root: Path, task: str = "Tick") -> list[Any]:
    return [r for r in runs(root, task) if r.status == "ok"]


def serve_for(app: ReqCron, seconds: float, force: bool = False) -> int:
    """Send requests for ``seconds`` (each one a check when ``force``); return how many."""
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if force:
            app._wake_at = 0  # a check on every request, not once per poll
        assert request(app)[0] == "200 OK"
        count += 1
        time.sleep(0.01)
    return count


@pytest.fixture
def gunicorn(tmp_path: Path, serve: Callable[..., Server]) -> Callable[..., Server]:
    def start(root: Path, workers: int = 3) -> Server:
        (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(docroot=str(root))))
        return serve(str(BIN / "gunicorn"), "--workers", str(workers), "--bind",
                     "127.0.0.1:{port}", "--graceful-timeout", "5", "app:application")

    return start


@pytest.fixture
def immutable() -> Iterator[Callable[[Path, bool], None]]:
    """Set or clear the immutable attribute (chattr +i): it binds root too, unlike modes."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    marked: set[Path] = set()

    def mark(path: Path, on: bool = True) -> None:
        done = subprocess.run(["chattr", "+i" if on else "-i", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr does not work here: {done.stderr.strip()}")
        (marked.add if on else marked.discard)(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


# -- 1. a tasks file that exits, loops, forks or floods at import ----------------------


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_tasks_file_that_misbehaves_at_import_harms_no_worker(
    fault: str, make_docroot: Callable[..., Path], gunicorn: Callable[..., Server],
    tmp_path: Path
) -> None:
    tail, problem, check_code = FAULTS[fault]
    root = make_docroot(GOOD)
    server = gunicorn(root)
    url = server.url + "pid"

    def read_by_the_server(test: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
        def step() -> dict[str, Any] | None:
            get(url)
            catalog = stored_catalog(root)
            return catalog if catalog is not None and test(catalog) else None
        return step

    def names(catalog: dict[str, Any]) -> set[str]:
        return {t["name"] for t in catalog["tasks"]}

    wait_for(read_by_the_server(lambda c: names(c) == {"Hourly"}), timeout=20,
             message="the server to read the good tasks file")
    before = wait_for(lambda: len(workers(server)) == 3 and workers(server), timeout=20,
                      message="three workers")

    replace(root / "__tasks__.py", GOOD + tail)
    started = time.monotonic()
    if problem is None:
        after_read = read_by_the_server(lambda c: "Extra" in names(c))
    else:
        after_read = read_by_the_server(lambda c: problem in (c["file_error"] or ""))
    catalog = wait_for(after_read, timeout=READ_TIMEOUT + 15,
                       message=f"the server to read the {fault} file")
    assert time.monotonic() - started < READ_TIMEOUT + 10
    # It goes on serving, from the same workers, with no reader left behind.
    pids = {int(get(url)) for _ in range(30)}
    assert server.proc.poll() is None, "the master died"
    assert pids <= before
    assert workers(server) == before, "a worker died or was replaced"
    assert processes("reqcron.loading.child", str(root)) == []

    # The last good schedule is kept, with the load error beside it.
    listed = reqcron_cmd("list", str(root), "--json")
    data = json.loads(listed.stdout)
    shown = {t["name"]: t for t in data["tasks"]}
    assert "Hourly" in shown
    if problem is None:
        assert listed.returncode == 0, listed.stderr
        assert data["load_errors"] == [] and "Extra" in shown
    else:
        assert listed.returncode == 2
        assert shown["Hourly"]["error"] and problem in shown["Hourly"]["error"]
        assert len(data["load_errors"]) == 1 and problem in data["load_errors"][0]
        assert len(data["load_errors"][0]) < ERROR_LIMIT + 1000  # a message, not the flood
        assert catalog["file_error"] and len(catalog["file_error"]) <= ERROR_LIMIT

    # `reqcron check` names the problem: from the state the server wrote (in one
    # sentence), and by reading the file itself (a fresh state) within the time limit.
    for env in ({}, {"XDG_STATE_HOME": str(tmp_path / "fresh")}):
        begun = time.monotonic()
        checked = reqcron_cmd("check", str(root), env={**os.environ, **env})
        assert time.monotonic() - begun < READ_TIMEOUT + 15
        assert checked.returncode == check_code, checked.stderr
        errors = [line for line in checked.stderr.splitlines()
                  if line.startswith("reqcron: ") and not line.startswith("reqcron: warning:")]
        if problem is None:
            assert errors == []
        else:
            assert len(errors) == 1 and problem in errors[0], checked.stderr
            if not env:
                assert len(checked.stderr.splitlines()) == 1, checked.stderr
            assert len(checked.stderr) < 2 * (ERROR_LIMIT + 1000)  # once: see the test below
        assert processes("reqcron.loading.child", str(root)) == []

    # Logged once by the whole server (not per worker or per request); no flood in it.
    for _ in range(20):
        get(url)
    log = server.log.read_bytes()
    assert len(log) < 1_000_000, f"the server's log grew to {len(log)} bytes"
    # At most one capped error message of it (ERROR_LIMIT characters).
    assert b"x" * (ERROR_LIMIT + 1) not in log
    if problem is None:
        assert b"x" * 1000 not in log
    if problem is not None:
        assert log.decode().count(problem) == 1, log.decode()[-3000:]
    assert workers(server) == before


def test_a_copy_forked_at_import_that_leaves_its_session_is_not_left_behind(
    make_docroot: Callable[..., Path]
) -> None:
    root = make_docroot(GOOD + "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                        "    time.sleep(60)\n")
    begun = time.monotonic()
    checked = reqcron_cmd("check", str(root))
    assert time.monotonic() - begun < READ_TIMEOUT + 10  # nothing held the answer's pipe
    assert checked.returncode == 2
    assert "__tasks__.py:7: it forked at import" in checked.stderr, checked.stderr
    wait_for(lambda: processes("reqcron.loading.child", str(root)) == [], timeout=5,
             message="the forked copy to be gone")


def test_check_that_reads_the_file_itself_names_the_problem_once(
    make_docroot: Callable[..., Path]
) -> None:
    root = make_docroot(GOOD + "import os\nos._exit(3)\n")
    checked = reqcron_cmd("check", str(root))
    assert checked.returncode == 2
    assert checked.stderr.count("exited with code 3") == 1, checked.stderr


# -- 2. the state directory deleted while the site serves -------------------------------


def test_a_deleted_state_dir_is_recreated_private_and_runs_resume(
    make_docroot: Callable[..., Path], middleware: Callable[..., ReqCron], tmp_path: Path
) -> None:
    state_dir = tmp_path / "var" / "state"
    root = make_docroot(TICK, f'[reqcron]\nstate_dir = "{state_dir}"\n')
    app = middleware(hello, root, poll=0.2)
    drive(app, lambda: ok_runs(root), message="a first ok run")
    shutil.rmtree(state_dir)
    assert not state_dir.exists()
    (run, *_) = drive(app, lambda: ok_runs(root), message="an ok run in a recreated state")
    assert run.trigger == "request"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "state.db").stat().st_mode) == 0o600


# -- 3. a state directory that cannot be written when the site starts -------------------


def test_a_read_only_state_dir_made_writable_later_resumes_runs(
    make_docroot: Callable[..., Path], middleware: Callable[..., ReqCron],
    immutable: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "var" / "state"
    root = make_docroot(TICK, f'[reqcron]\nstate_dir = "{state_dir}"\n')
    assert reqcron_cmd("list", str(root)).returncode == 0  # an existing state.db
    assert (state_dir / "state.db").exists()
    # chmod 0500 does not stop root: the immutable attribute does (no new files
    # in it, so SQLite cannot make its -wal and -shm files).
    immutable(state_dir)
    app = middleware(hello, root, poll=0.2)
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        wait_for(lambda: request(app)[0] == "200 OK" and caplog.records, timeout=10,
                 message="the problem to be logged")
        assert serve_for(app, 1.5, force=True) > 20
    assert peek_runs(state_dir / "state.db") == []
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert str(state_dir) in caplog.records[0].getMessage()
    assert "no file can be created in" in caplog.records[0].getMessage()
    reset = reqcron_cmd("state", "reset", str(root))  # cannot rename it: one sentence
    assert reset.returncode == 2 and "cannot set it aside" in reset.stderr, reset.stderr
    immutable(state_dir, False)
    drive(app, lambda: ok_runs(root), message="an ok run once the state dir is writable")


def test_a_state_dir_below_a_file_resumes_runs_once_the_file_is_a_dir(
    make_docroot: Callable[..., Path], middleware: Callable[..., ReqCron], tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    # The same without chattr: a path below a regular file fails for root too (ENOTDIR).
    var = tmp_path / "var"
    var.write_text("")
    root = make_docroot(TICK, f'[reqcron]\nstate_dir = "{var / "state"}"\n')
    app = middleware(hello, root, poll=0.2)
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        wait_for(lambda: request(app)[0] == "200 OK" and caplog.records, timeout=10,
                 message="the problem to be logged")
        assert serve_for(app, 1, force=True) > 20
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    var.unlink()
    var.mkdir()
    drive(app, lambda: ok_runs(root), message="an ok run once the state dir can be made")
    assert stat.S_IMODE((var / "state").stat().st_mode) == 0o700


# -- 4. a damaged state.db ------------------------------------------------------------


def damage(db: Path, how: str) -> bytes:
    """Replace state.db (and drop its WAL files) with a damaged copy of it; return that."""
    data = db.read_bytes()
    broken = {"empty": b"", "truncated": data[:100], "garbage": os.urandom(len(data) or 8192)}
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    tmp = db.with_name("damaged.tmp")
    tmp.write_bytes(broken[how])
    os.replace(tmp, db)
    return broken[how]


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_a_damaged_state_stops_claiming_is_logged_once_and_reset_resumes(
    how: str, make_docroot: Callable[..., Path], middleware: Callable[..., ReqCron],
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "var" / "state"
    root = make_docroot(TICK, f'[reqcron]\nstate_dir = "{state_dir}"\n')
    db = state_dir / "state.db"
    first = middleware(hello, root, poll=0.2)
    drive(first, lambda: ok_runs(root), message="a first ok run")
    first.close()
    wait_for(lambda: not processes("reqcron.runtask", str(root)), message="runs to end")
    broken = damage(db, how)

    app = middleware(hello, root, poll=0.2)
    seen: set[int] = set()
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            app._wake_at = 0
            assert request(app)[0] == "200 OK"
            seen.update(processes("reqcron.runtask", str(root)))
            time.sleep(0.02)
        wait_for(lambda: caplog.records, message="the damage to be logged")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "damaged" in messages[0] and "reqcron state reset" in messages[0]
    assert seen == set(), "task processes were started on a damaged state"

    checked = reqcron_cmd("check", str(root))
    assert checked.returncode == 2
    assert "damaged" in checked.stderr and "reqcron state reset" in checked.stderr
    reset = reqcron_cmd("state", "reset", str(root))
    assert reset.returncode == 0, reset.stderr
    aside = [p for p in state_dir.iterdir() if p.name.startswith("state.db.broken")]
    assert len(aside) == 1 and aside[0].read_bytes() == broken  # kept as it was
    drive(app, lambda: ok_runs(root), message="an ok run in the fresh state")
    assert reqcron_cmd("check", str(root)).returncode == 0


def test_a_state_made_by_many_processes_at_once_is_never_seen_half_made(tmp_path: Path) -> None:
    # An empty state.db counts as damaged, so no process may ever see one being made.
    db = tmp_path / "race" / "state.db"
    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from reqcron.store.sqlite import SQLiteStore
        Path({str(tmp_path)!r}, f"ready-{{os.getpid()}}").touch()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        store = SQLiteStore(Path({str(db)!r}))
        store.pulse()
        store.close()
    """)
    procs = [popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == len(procs), timeout=20,
             message="every process to wait for the signal")
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert [p.name for p in db.parent.iterdir() if ".new-" in p.name] == []


def test_two_resets_in_one_second_keep_both_old_states(tmp_path: Path) -> None:
    db = tmp_path / "state" / "state.db"
    kept = []
    for _ in range(2):
        store = SQLiteStore(db)
        store.set_meta("which", str(len(kept)))
        kept.append(store.set_aside())
        store.close()
    assert kept[0] != kept[1]
    for number, aside in enumerate(kept):
        assert aside is not None
        store = SQLiteStore(Path(aside))
        assert store.meta("which") == str(number)
        store.close()


# -- 5. a missing or unusable state directory is logged once per cause ------------------


def test_an_unusable_state_dir_is_logged_once_per_cause(
    make_docroot: Callable[..., Path], middleware: Callable[..., ReqCron],
    immutable: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    opens = [0]
    real_open = SQLiteStore._open

    def counted(self: SQLiteStore) -> Any:
        opens[0] += 1
        return real_open(self)

    monkeypatch.setattr(SQLiteStore, "_open", counted)
    blocker = tmp_path / "file"
    blocker.write_text("")
    parent = tmp_path / "locked"
    parent.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    causes = {
        "not a dir": blocker / "state",  # below a regular file
        "missing, cannot be made": parent / "state",
        "cannot make state.db in it": empty,
    }
    roots = [make_docroot(TICK, f'[reqcron]\nstate_dir = "{where}"\n') for where in causes.values()]
    immutable(parent)
    immutable(empty)
    apps = [middleware(hello, root, poll=0.05) for root in roots]
    with caplog.at_level(logging.WARNING, logger="reqcron"):
        for app in apps:
            wait_for(lambda app=app: request(app)[0] == "200 OK" and opens[0], timeout=10)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for app in apps:
                app._wake_at = 0
                assert request(app)[0] == "200 OK"
            time.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records]
    assert opens[0] >= 30, "the state was not tried again and again"
    assert len(messages) == len(causes), messages
    for where in causes.values():
        assert sum(str(where) in m for m in messages) == 1, messages


# -- 6. `reqcron check` on a bad interpreter and an unusable state ----------------------


@pytest.mark.parametrize("problems", [["python"], ["state"], ["python", "state"]])
def test_check_names_a_missing_interpreter_and_an_unusable_state(
    problems: list[str], make_docroot: Callable[..., Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    toml = "[reqcron]\n"
    if "python" in problems:
        toml += 'python = "/nonexistent"\n'
    if "state" in problems:
        toml += f'state_dir = "{blocker / "state"}"\n'
    root = make_docroot(GOOD, toml)
    checked = reqcron_cmd("check", str(root), timeout=30)
    assert checked.returncode == 2, checked
    if "python" in problems:
        assert "/nonexistent" in checked.stderr
    if "state" in problems:
        assert str(blocker / "state") in checked.stderr
        assert "Not a directory" in checked.stderr
        assert "cannot be used: state at" not in checked.stderr  # said once, not nested
    assert len(checked.stderr.splitlines()) >= len(problems)
    assert "Traceback" not in checked.stderr
