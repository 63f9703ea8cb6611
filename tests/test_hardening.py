"""Hardening: no slot lost to a zone or a broken class, state where it belongs, triggers told
truthfully, fork-safe locks, files that cannot shadow or be tampered with."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import reqcron_cmd, runtask, wait_for, write

from reqcron import ReqCron
from reqcron.records import Status

T0 = 1795435230.0  # 2026-11-23 12:00:30 UTC
MINUTE_TASK = "from reqcron import Task\nclass Tick(Task):\n    cron = '* * * * *'\n"

ZONED_DUE = """
import json, sys
from reqcron import Docroot
doc = Docroot(sys.argv[1])
print(json.dumps([[c.task, c.slot] for c in doc.due(at=float(sys.argv[2]))]))
"""


def test_triggers_in_different_local_zones_share_one_schedule(make_docroot):
    # A systemd unit with TZ=UTC beside a crontab in Europe/Amsterdam, no timezone setting.
    root = make_docroot("from reqcron import Task\nclass Nine(Task):\n    cron = '0 * * * *'\n")
    claimed = []
    for hour in range(6):
        zone = ("UTC", "Europe/Amsterdam")[hour % 2]
        proc = subprocess.run([sys.executable, "-c", ZONED_DUE, str(root), str(T0 + 3600 * hour)],
                              capture_output=True, text=True, env={**os.environ, "TZ": zone},
                              check=True)
        claimed += json.loads(proc.stdout)
    assert [slot for _, slot in claimed] == [T0 - 30 + 3600 * h for h in range(1, 6)]
    check = reqcron_cmd("check", str(root), env={**os.environ, "TZ": "Europe/Amsterdam"})
    assert check.returncode == 1, check.stderr  # a warning: nothing lost, but say so
    assert "local zone is Europe/Amsterdam" in check.stderr and "UTC" in check.stderr


def test_processes_naming_one_zone_differently_agree_without_a_warning(make_docroot):
    # A state made by a process in TZ=UTC, checked from one in TZ=Etc/UTC: one zone.
    root = make_docroot("from reqcron import Task\nclass Nine(Task):\n    cron = '0 * * * *'\n")
    subprocess.run([sys.executable, "-c", ZONED_DUE, str(root), str(T0)], capture_output=True,
                   text=True, env={**os.environ, "TZ": "UTC"}, check=True)
    check = reqcron_cmd("check", str(root), env={**os.environ, "TZ": "Etc/UTC"})
    assert check.returncode == 0, check.stderr
    assert "local zone" not in check.stderr


def test_a_task_with_a_bad_value_keeps_its_state_and_records_its_slots(make_docroot, docroot):
    root = make_docroot(MINUTE_TASK + "class Other(Task):\n    cron = '* * * * *'\n")
    doc = docroot(root)
    doc.due(at=T0)
    write(root / "__tasks__.py", MINUTE_TASK.replace("* * * * *", "61 * * * *")
          + "class Other(Task):\n    cron = '* * * * *'\n")
    claims = doc.due(at=T0 + 61)
    assert [c.task for c in claims] == ["Other"]  # the others go on
    assert "Tick" in doc.catalog().tasks  # its last good definition
    (run,) = doc.history("Tick")
    assert run.status == Status.FAILED and "61 * * * *" in run.error
    listed = json.loads(reqcron_cmd("list", str(root), "--json").stdout)
    tick = next(t for t in listed["tasks"] if t["name"] == "Tick")
    assert "broken" in tick["marks"] and tick["last_run"]["status"] == "failed"
    check = reqcron_cmd("check", str(root))
    assert check.returncode == 2 and "'Tick'" in check.stderr


def test_list_shows_the_last_known_tasks_while_the_file_is_broken(make_docroot):
    root = make_docroot(MINUTE_TASK)
    assert reqcron_cmd("list", str(root)).returncode == 0
    write(root / "__tasks__.py", "from reqcron import Task\nclass Tick(Task:\n")
    proc = reqcron_cmd("list", str(root))
    assert proc.returncode == 2
    assert "Tick" in proc.stdout and "BROKEN" in proc.stdout and "SyntaxError" in proc.stdout


def test_a_typo_docroot_is_a_usage_error_and_creates_nothing(tmp_path, state_home):
    empty = tmp_path / "www"
    empty.mkdir()
    for args in (("check",), ("list",), ("due",), ("crontab",), ("run", "X")):
        proc = reqcron_cmd(args[0], str(empty), *args[1:])
        assert proc.returncode == 2, (args, proc.stderr)
        assert "has no __tasks__.py" in proc.stderr
    assert runtask(empty, "X").returncode == 2
    assert not state_home.exists()


def test_a_world_writable_tasks_file_is_refused(make_docroot):
    root = make_docroot(MINUTE_TASK)
    (root / "__tasks__.py").chmod(0o666)
    proc = reqcron_cmd("check", str(root))
    assert proc.returncode == 2 and "refusing to load tasks" in proc.stderr
    run = runtask(root, "Tick")
    assert run.returncode == 2 and "refusing to load tasks" in run.stderr


def test_a_docroot_module_never_shadows_the_standard_library(make_docroot, tmp_path, docroot):
    marker = tmp_path / "shadowed"
    root = make_docroot("import json\nfrom reqcron import Task\nclass T(Task):\n"
                        "    def run(self):\n        return json.dumps([1])\n")
    (root / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    command = [os.path.join(sys.prefix, "bin", "runtask"), str(root), "T"]
    assert subprocess.run(command, cwd=root, capture_output=True).returncode == 0
    docroot(root).run_now("T")
    # The reqcron command, run from inside the DOCROOT, starts the task process there.
    proc = subprocess.run([os.path.join(sys.prefix, "bin", "reqcron"), "due", str(root), "--wait"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def test_a_trigger_run_by_another_user_is_warned_about(make_docroot):
    root = make_docroot(MINUTE_TASK)
    os.chown(root / "__tasks__.py", 65534, 65534)
    check = reqcron_cmd("check", str(root))
    assert check.returncode == 1 and "state is per user" in check.stderr
    assert "state is per user" in runtask(root, "Tick").stderr


def test_a_fork_while_the_store_lock_is_held_does_not_deadlock_the_child(make_docroot, docroot):
    doc = docroot(make_docroot(MINUTE_TASK))
    store = doc.store
    store.pulse()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the lock must be free here, its holder thread is gone
        try:
            doc.due()
            os._exit(0)
        except BaseException:
            os._exit(1)
    release.set()
    holder.join()
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child deadlocked on the store's lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_file_change_refreshes_but_only_a_request_starts_runs(make_docroot, docroot):
    root = make_docroot(MINUTE_TASK.replace("cron = '* * * * *'", "every = 1"))
    app = ReqCron(lambda e, s: s("200 OK", []) or [b""], root, poll=0.1)
    try:
        from wsgiref.util import setup_testing_defaults

        environ: dict[str, object] = {}
        setup_testing_defaults(environ)
        def request() -> bool:
            list(app(environ, lambda *a: None))
            return True

        wait_for(lambda: request() and app.docroot is not None
                 and app.docroot.store.runs("Tick"), message="a first run")
        doc = docroot(root)
        write(root / "__tasks__.py", MINUTE_TASK.replace("cron = '* * * * *'", "every = 1")
              + "class New(Task):\n    every = 1\n")
        # The watcher re-reads the file (the new task gets its row) with no request...
        wait_for(lambda: "New" in doc.store.states(), message="the change read")
        time.sleep(1.5)  # New's first slot passes with no request: nothing may claim it
        assert doc.store.runs("New") == []
        # ...and the next request starts it.
        (run, *_) = wait_for(lambda: request() and doc.store.runs("New"), message="a run of New")
        assert run.trigger == "request"
        doc.close()
    finally:
        app.close()


def test_a_catch_up_run_records_how_many_slots_it_stands_for(make_docroot, docroot):
    doc = docroot(make_docroot(MINUTE_TASK))
    doc.due(at=T0)
    (claim,) = doc.due(at=T0 + 600)
    assert doc.get_run(claim.run_id).slots == 10


def test_an_interval_under_a_second_is_refused(make_docroot):
    root = make_docroot("from reqcron import Task\nclass Fast(Task):\n    every = 1e-9\n")
    proc = reqcron_cmd("check", str(root))
    assert proc.returncode == 2 and "every must be between 1 second" in proc.stderr


def test_one_task_whose_schedule_fails_in_due_does_not_stop_the_others(make_docroot, docroot):
    root = make_docroot(MINUTE_TASK + "class Beat(Task):\n    every = 5\n")
    doc = docroot(root)
    doc.due(at=T0)
    # What `every = 1e-9` did before it was refused: a schedule that fails in the shared loop.
    with sqlite3.connect(doc.store.location) as db:
        data = json.loads(db.execute("SELECT data FROM catalog").fetchone()[0])
        for info in data["tasks"]:
            if info["name"] == "Beat":
                info["signature"] = "every:0.0"
        db.execute("UPDATE catalog SET data = ?, version = version + 1", (json.dumps(data),))
        db.execute("UPDATE tasks SET signature = 'every:0.0' WHERE name = 'Beat'")
    claims = doc.due(at=T0 + 61)
    assert [c.task for c in claims] == ["Tick"]
    (broke,) = doc.history("Beat")
    assert broke.status == "failed" and "ZeroDivisionError" in broke.error
    assert doc.due(at=T0 + 122) != []  # still going, and Beat is parked, not failing each time
    assert len(doc.history("Beat")) == 1


def test_crontab_exits_non_zero_when_a_task_does_not_load(make_docroot):
    root = make_docroot(MINUTE_TASK + "class Bad(Task):\n    cron = 'nope'\n")
    proc = reqcron_cmd("crontab", str(root))
    assert proc.returncode == 1 and "'Bad'" in proc.stderr
    assert f"--if-due {root} Tick" in proc.stdout


def test_a_cron_schedule_in_the_localtime_zone_round_trips(make_docroot, docroot):
    # /etc/localtime copied as a plain file has no IANA name: the zone is "localtime".
    root = make_docroot(MINUTE_TASK.replace("* * * * *", "0 * * * *"),
                        '[reqcron]\ntimezone = "localtime"\n')
    doc = docroot(root)
    doc.due(at=T0)
    assert doc.catalog().tasks["Tick"].signature == "cron:0 * * * *@localtime"
    (claim,) = doc.due(at=T0 + 3600)
    assert claim.slot == T0 - 30 + 3600
    listed = reqcron_cmd("list", str(root))  # starved (it ran in the past), not broken
    assert "every hour at :00" in listed.stdout and "load error" not in listed.stdout


def test_fixing_a_world_writable_tasks_file_is_seen_without_a_content_change(make_docroot):
    root = make_docroot(MINUTE_TASK)
    assert reqcron_cmd("check", str(root)).returncode == 0
    (root / "__tasks__.py").chmod(0o646)
    refused = reqcron_cmd("check", str(root))
    assert refused.returncode == 2 and "refusing to load tasks" in refused.stderr
    (root / "__tasks__.py").chmod(0o644)
    assert reqcron_cmd("check", str(root)).returncode == 0
