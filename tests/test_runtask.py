"""`runtask DOCROOT TASKNAME` as a real process: exit codes, locks, signals, timeouts, context."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest
from conftest import last_run, runtask, start_runtask, wait_for

TASKS = """
import os, signal, sys, time
from datetime import timedelta
from pathlib import Path
from reqcron import Task

MARK = Path(os.environ.get("MARK_DIR", "/nonexistent"))

class MyTask(Task):                       # the spec's Draco example
    def __init__(self):
        Task.__init__(self)
        self.schedule(hour=(0, 4, 8, 12, 16, 20))

    def run(self):
        self.logger.info("cleaning up")
        print("printed by run")
        return {"removed": 3}

class Fails(Task):
    def run(self):
        raise ValueError("the disk is full")

class Dies(Task):
    def run(self):
        os.kill(os.getpid(), signal.SIGKILL)

class Exits(Task):
    def run(self):
        sys.exit(3)

class Slow(Task):
    def run(self):
        (MARK / "slow-started").write_text(str(os.getpid()))
        deadline = time.monotonic() + 30
        while self.proceed() and time.monotonic() < deadline:
            time.sleep(0.05)
        (MARK / "slow-stopped").write_text("yes")

class Polite(Task):
    timeout = 0.5
    def run(self):
        while self.proceed():
            time.sleep(0.02)
        print("asked to stop, stopping")

class Stubborn(Task):
    timeout = 0.3
    stop_grace = 0.5
    def run(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(30)

class Context(Task):
    def run(self):
        cur = self.database.cursor()
        cur.execute("create table if not exists t (x)")
        cur.execute("insert into t values (1)")
        self.database.commit()
        return {"config": dict(self.config), "docroot": str(self.docroot),
                "logger": self.logger.name, "proceed": self.proceed()}
"""

TOML = """
[reqcron]
database = "app.db"
history = 5

[config]
greeting = "hello"
"""


@pytest.fixture
def site(make_docroot, tmp_path, monkeypatch):
    monkeypatch.setenv("MARK_DIR", str(tmp_path))
    return make_docroot(TASKS, TOML)


def test_draco_example_runs_and_is_recorded(site):
    proc = runtask(site, "MyTask")
    assert proc.returncode == 0, proc.stderr
    assert "printed by run" in proc.stdout  # its output goes to the terminal too
    assert "cleaning up" in proc.stdout
    run = last_run(site, "MyTask")
    assert (run.status, run.exit_code, run.trigger) == ("ok", 0, "manual")
    assert run.return_value == '{"removed": 3}'
    assert "printed by run" in run.output and "cleaning up" in run.output
    assert run.start <= run.end


def test_a_task_that_raises_exits_1_with_its_traceback_kept(site):
    proc = runtask(site, "Fails")
    assert proc.returncode == 1
    run = last_run(site, "Fails")
    assert run.status == "failed"
    assert run.error == "ValueError: the disk is full"
    assert '__tasks__.py", line 21, in run' in run.traceback and "runner.py" not in run.traceback


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("Dies", "its process died of SIGKILL"),
        ("Exits", "SystemExit: 3"),
    ],
)
def test_a_task_whose_process_dies_exits_1(site, name, error):
    assert runtask(site, name).returncode == 1
    assert last_run(site, name).error == error


@pytest.mark.parametrize(
    "name", ["../x", "os", "__class__", "Task", "a;b", "MyTask; rm -rf /", "", "__builtins__"]
)
def test_a_hostile_task_name_gets_exit_2_and_nothing_runs(site, name, docroot):
    proc = runtask(site, name)
    assert proc.returncode == 2
    assert "known tasks: Context, Dies, Exits, Fails, MyTask, Polite, Slow, Stubborn" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    doc = docroot(site)
    assert doc.history() == []


def test_usage_errors_exit_2_with_one_sentence(site, tmp_path):
    for args in [(), (str(site),), (str(tmp_path / "missing"), "MyTask")]:
        proc = runtask(*args) if args else runtask("")
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_a_broken_tasks_file_exits_2_naming_file_and_line(make_docroot):
    root = make_docroot("from reqcron import Task\n\nclass A(Task):\n    cron = '0 1 * *\n")
    proc = runtask(root, "A")
    assert proc.returncode == 2
    assert f"{root / '__tasks__.py'}:4: SyntaxError" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_toml_exits_2_naming_file_and_line(make_docroot):
    root = make_docroot(
        "from reqcron import Task\nclass A(Task):\n    pass\n", "[reqcron]\nhistory = \n"
    )
    proc = runtask(root, "A")
    assert proc.returncode == 2
    assert "reqcron.toml:2: invalid TOML" in proc.stderr


def test_a_task_with_an_invalid_schedule_exits_2(make_docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    cron = '0 25 * * *'\n")
    proc = runtask(root, "A")
    assert proc.returncode == 2
    assert "task 'A' has an invalid schedule" in proc.stderr


def test_an_unwritable_state_dir_exits_2_with_one_sentence(make_docroot, tmp_path):
    # Under a regular file: unusable even for root, who can write anywhere else.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    root = make_docroot(
        "from reqcron import Task\nclass A(Task):\n    pass\n",
        f'[reqcron]\nstate_dir = "{blocker / "inner"}"\n',
    )
    proc = runtask(root, "A")
    assert proc.returncode == 2
    assert "cannot be used" in proc.stderr and "Traceback" not in proc.stderr


def test_two_concurrent_runs_one_gets_75(site, tmp_path):
    first = start_runtask(site, "Slow")
    try:
        wait_for(lambda: (tmp_path / "slow-started").exists(), message="Slow to start")
        second = runtask(site, "Slow")
        assert second.returncode == 75
        assert "still running" in second.stderr
        assert last_run(site, "Slow").status == "skipped"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0  # Slow saw proceed() turn False and returned
    assert (tmp_path / "slow-stopped").exists()


def test_sigkill_leaves_no_stuck_lock_and_the_dead_run_is_recorded(site, tmp_path, docroot):
    proc = start_runtask(site, "Slow")
    task_pid = int(
        wait_for(
            lambda: (tmp_path / "slow-started").exists() and (tmp_path / "slow-started").read_text()
        )
    )
    proc.kill()
    proc.communicate(timeout=10)
    # The task's own process dies with its supervisor.
    wait_for(lambda: not _alive(task_pid), message="the task process to die")
    (tmp_path / "slow-started").unlink()
    second = start_runtask(site, "Slow")
    try:
        wait_for(lambda: (tmp_path / "slow-started").exists(), message="a new run to start")
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    assert second.returncode == 0
    doc = docroot(site)
    newest, dead = doc.history("Slow", limit=2)
    assert newest.status == "ok"
    assert dead.status == "failed" and "died" in dead.error


def test_a_sigkilled_run_is_noticed_by_history_too(site, tmp_path):
    proc = start_runtask(site, "Slow")
    wait_for(lambda: (tmp_path / "slow-started").exists())
    proc.kill()
    proc.communicate(timeout=10)
    run = wait_for(lambda: last_run(site, "Slow").status == "failed" and last_run(site, "Slow"))
    assert "died without recording an end" in run.error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of someone else still "exists"; read its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timeout_asks_politely_first(site):
    started = time.monotonic()
    proc = runtask(site, "Polite")
    assert proc.returncode == 124
    assert "asked to stop, stopping" in proc.stdout
    assert time.monotonic() - started < 10
    run = last_run(site, "Polite")
    assert run.status == "timeout" and "timeout of 0.5 s" in run.error


def test_a_timeout_kills_a_task_that_ignores_sigterm(site):
    proc = runtask(site, "Stubborn")
    assert proc.returncode == 124
    run = last_run(site, "Stubborn")
    assert run.status == "timeout" and "killed" in run.error


def test_a_disabled_task_is_not_run_and_exits_75(site, docroot):
    doc = docroot(site)
    doc.disable("MyTask")
    proc = runtask(site, "MyTask")
    assert proc.returncode == 75 and "disabled" in proc.stderr
    assert doc.history("MyTask")[0].status == "skipped"
    doc.enable("MyTask")
    assert runtask(site, "MyTask").returncode == 0


def test_disabling_a_running_task_makes_proceed_false(site, tmp_path, docroot):
    proc = start_runtask(site, "Slow")
    wait_for(lambda: (tmp_path / "slow-started").exists())
    doc = docroot(site)
    doc.disable("Slow")
    wait_for(lambda: (tmp_path / "slow-stopped").exists(), message="Slow to see proceed() False")
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_the_run_context(site):
    proc = runtask(site, "Context")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    value = json.loads(last_run(site, "Context").return_value)
    assert value == {
        "config": {"greeting": "hello"},
        "docroot": str(site),
        "logger": "reqcron.tasks.Context",
        "proceed": True,
    }
    with sqlite3.connect(site / "app.db") as db:  # committed, and closed after the run
        assert db.execute("select count(*) from t").fetchone() == (1,)
    db.close()


def test_history_is_pruned_to_the_configured_size(site, docroot):
    for _ in range(7):
        assert runtask(site, "Fails").returncode == 1
    doc = docroot(site)
    assert len(doc.history("Fails", limit=100)) == 5


def test_runtask_claims_a_due_slot_so_no_other_trigger_runs_it(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass Tick(Task):\n    every = 1\n")
    doc = docroot(root)
    doc.states()
    wait_for(lambda: doc.states()["Tick"].next_due <= time.time(), message="a slot to come due")
    proc = runtask(root, "Tick")
    assert proc.returncode == 0
    run = doc.history("Tick")[0]
    assert run.trigger == "cron" and run.slot is not None
    assert doc.states()["Tick"].next_due > run.slot


def test_if_due_runs_a_due_slot_once_whoever_comes_first(make_docroot, docroot):
    root = make_docroot("from reqcron import Task\nclass Tick(Task):\n    every = 1\n")
    doc = docroot(root)
    doc.states()
    wait_for(lambda: doc.states()["Tick"].next_due <= time.time(), message="a slot to come due")
    (claim,) = doc.due()  # a request got there first
    proc = runtask(root, "--if-due", "Tick")
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""
    # That slot is not run again (a slow start under load may find the next one due, and
    # rightly run that one).
    assert [r.id for r in doc.history("Tick") if r.slot == claim.slot] == [claim.run_id]
    wait_for(lambda: doc.states()["Tick"].next_due <= time.time(), message="the next slot")
    assert runtask(root, "--if-due", "Tick").returncode == 0  # this time it claims and runs
    newest = doc.history("Tick")[0]
    assert newest.trigger == "cron" and newest.status == "ok"
