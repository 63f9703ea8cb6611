"""ReqCron in-process: WSGI correctness, request-driven runs, detached processes, hot reload."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from wsgiref.validate import validator

import pytest
from conftest import drive, hello, reqcron_cmd, request, runtask, wait_for, write

from reqcron import ReqCron

PROBE = """
import json, os, time
from pathlib import Path
from reqcron import Task

class Tick(Task):
    every = 1
    def run(self):
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        return {"pid": os.getpid(), "sid": os.getsid(0), "ppid": os.getppid(),
                "fds": fds, "stdin": os.readlink("/proc/self/fd/0")}
"""


def test_the_wrapped_app_passes_wsgiref_validate(make_docroot, middleware):
    root = make_docroot(PROBE)
    app = validator(middleware(validator(hello), root))
    for _ in range(3):
        assert request(app) == ("200 OK", b"hello")


def test_streaming_close_and_exc_info_pass_through_unchanged(make_docroot, middleware):
    closed = []

    class Body:
        def __iter__(self):
            yield b"a"
            yield b"b"

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        try:
            raise ValueError("x")
        except ValueError:
            import sys

            start_response("500 Oops", [], sys.exc_info())
        return Body()

    wrapped = middleware(app, make_docroot(PROBE))
    seen = []
    body = wrapped({"PATH_INFO": "/"}, lambda s, h, exc_info=None: seen.append(exc_info))
    assert isinstance(body, Body)  # the very same iterable: nothing buffered or wrapped
    assert b"".join(body) == b"ab"
    body.close()
    assert closed and seen[0][0] is ValueError


def test_requests_run_a_one_second_task_in_detached_processes(make_docroot, middleware, docroot):
    root = make_docroot(PROBE)
    listener = socket.socket()  # an inheritable socket, like a server's listening one
    listener.set_inheritable(True)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        app = middleware(hello, root)
        doc = docroot(root)
        started = time.monotonic()
        runs = drive(
            app,
            lambda: (
                len([r for r in doc.store.runs("Tick") if r.status == "ok"]) >= 3
                and doc.store.runs("Tick")
            ),
            message="three runs of Tick",
        )
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    ok = [r for r in runs if r.status == "ok"]
    assert elapsed < 8  # about once a second
    assert len({r.slot for r in runs}) == len(runs)
    for run in ok:
        seen = json.loads(run.return_value)
        assert seen["sid"] == seen["ppid"] != os.getpid()  # its runtask leads its own session
        assert seen["stdin"] == "/dev/null"
        assert not [t for t in seen["fds"].values() if t.startswith("socket:")]
        assert run.trigger == "request"


def test_a_slow_task_does_not_slow_requests(make_docroot, middleware, tmp_path):
    marker = tmp_path / "slow"
    root = make_docroot(f"""
        import time
        from reqcron import Task
        class Slow(Task):
            every = 1
            overlap = True
            def run(self):
                open({str(marker)!r}, "a").write("x")
                time.sleep(3)
    """)
    app = middleware(hello, root)
    worst = 0.0

    def second_run_started():
        nonlocal worst
        t = time.perf_counter()
        assert request(app)[0] == "200 OK"
        worst = max(worst, time.perf_counter() - t)
        return marker.exists() and len(marker.read_text()) >= 2

    # Two runs started: requests went on while the first one slept.
    wait_for(second_run_started, timeout=15, interval=0.01,
             message="a second run of Slow while the first one sleeps")
    assert worst < 0.5, f"a request took {worst:.3f} s"


def test_no_docroot_passes_through_and_logs_once(middleware, caplog):
    app = middleware(hello)
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        for _ in range(5):
            assert request(app) == ("200 OK", b"hello")
            app._wake_at = 0  # force a check on every request
    assert sum("no DOCROOT" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(("made", "problem"), [
    (None, "does not exist or is not a directory"),
    ("", "has no __tasks__.py"),
])
def test_a_docroot_that_cannot_be_one_is_logged_at_construction_and_the_app_served(
        make_docroot, middleware, tmp_path, caplog, made, problem):
    root = tmp_path / "typo" if made is None else make_docroot(name="typo")
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        app = middleware(hello, root)
        said = [r.getMessage() for r in caplog.records]  # before any request
        assert len(said) == 1 and f"DOCROOT '{root}' {problem}" in said[0], said
        assert "\n" not in said[0] and "requests are served as usual" in said[0]
        for _ in range(3):
            assert request(app) == ("200 OK", b"hello")


def test_docroot_from_the_environ(make_docroot, middleware, docroot):
    root = make_docroot(PROBE)
    app = middleware(hello)
    doc = docroot(root)
    drive(app_with_env(app, str(root)), lambda: doc.store.runs("Tick"), message="a run")


def app_with_env(app, root):
    def call(environ, start_response):
        environ["DOCUMENT_ROOT"] = root
        return app(environ, start_response)

    return call


def test_hot_reload_adds_changes_and_removes_tasks(make_docroot, middleware, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    every = 1\n")
    app = middleware(hello, root)
    doc = docroot(root)
    drive(app, lambda: doc.store.runs("A"), message="A to run")
    hourly_a = "from reqcron import Task\nclass A(Task):\n    every = 3600\n"
    write(root / "__tasks__.py", hourly_a + "class B(Task):\n    every = 1\n")
    first_b = drive(app, lambda: doc.store.runs("B"), message="B, added while serving, to run")[-1]
    # The anchor: B ran two more one-second slots, which the old A had too.
    drive(app, lambda: [r for r in doc.store.runs("B") if r.slot >= first_b.slot + 1.5],
          message="two more slots of B")
    # A's change was stored with B's arrival: no claim of A came after B's first.
    assert not [r for r in doc.store.runs("A") if r.id > first_b.id]
    write(root / "__tasks__.py", hourly_a + "class C(Task):\n    every = 1\n")
    first_c = drive(app, lambda: doc.store.runs("C"), message="C, added as B went, to run")[-1]
    drive(app, lambda: [r for r in doc.store.runs("C") if r.slot >= first_c.slot + 1.5],
          message="two more slots of C")
    assert "B" not in doc.catalog().tasks
    assert not [r for r in doc.store.runs("B") if r.id > first_c.id]  # only runs in flight


def test_a_broken_tasks_file_is_survived_recorded_and_recovered(
    make_docroot, middleware, caplog, docroot
):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    every = 1\n")
    app = middleware(hello, root)
    doc = docroot(root)
    drive(app, lambda: [r for r in doc.store.runs("A") if r.status == "ok"], message="A ok")
    write(
        root / "__tasks__.py",
        "from reqcron import Task\nclass A(Task):\n    every = 1\n"
        "    def run(self)\n        pass\n",
    )
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        failed = drive(
            app,
            lambda: [r for r in doc.store.runs("A") if r.status == "failed"],
            message="a slot recorded as failed while the file is broken",
        )
        # Later slots fold into the same row while the error stays the same.
        drive(app, lambda: [r for r in doc.store.runs("A") if r.status == "failed"
                            and r.slots >= 2], message="a second failed slot")
    assert sum("SyntaxError" in r.getMessage() for r in caplog.records) == 1  # once per change
    failed = [r for r in doc.store.runs("A") if r.status == "failed"]
    assert "__tasks__.py:4: SyntaxError" in failed[0].error
    assert "A" in app.docroot.catalog().tasks  # nothing dropped
    assert "SyntaxError" in str(app.docroot.load_errors()[0])
    write(root / "__tasks__.py", "from reqcron import Task\nclass A(Task):\n    every = 1\n")
    newest = failed[0].id
    drive(
        app,
        lambda: [r for r in doc.store.runs("A") if r.status == "ok" and r.id > newest],
        message="A to run again once fixed",
    )


def test_an_unusable_state_dir_still_serves(make_docroot, middleware, tmp_path, caplog, docroot):
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = make_docroot(PROBE, f'[reqcron]\nstate_dir = "{blocker / "x"}"\n')
    good = make_docroot(PROBE)  # beside it, so that its runs show the checks go on
    app = middleware(hello)
    turn = [0]

    def both(environ, start_response):
        turn[0] += 1
        environ["DOCUMENT_ROOT"] = str(bad if turn[0] % 2 else good)
        return app(environ, start_response)

    doc = docroot(good)

    def ticks():
        return [r for r in doc.store.runs("Tick") if r.status == "ok"]

    def logged():
        return sum("cannot be used" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="reqcron"):
        drive(both, logged, timeout=30, message="the unusable state to be logged")
        seen = len(ticks())
        # Each check tends both sites: two more runs of the good one are two
        # more checks of the bad one.
        drive(both, lambda: len(ticks()) >= seen + 2, timeout=30, message="two more checks")
    assert logged() == 1


def test_a_bad_toml_still_serves(make_docroot, middleware, caplog):
    root = make_docroot(PROBE, "[reqcron\n")
    app = middleware(hello, root)
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        drive(app, lambda: any("invalid TOML" in r.getMessage() for r in caplog.records),
              message="the TOML error to be logged")


def test_a_missing_task_interpreter_is_recorded(make_docroot, middleware, docroot):
    root = make_docroot(PROBE, '[reqcron]\npython = "/nonexistent/python3"\n')
    app = middleware(hello, root)
    doc = docroot(root)
    drive(app, lambda: "/nonexistent/python3" in str(doc.load_errors()), message="the error")
    assert request(app) == ("200 OK", b"hello")


def test_a_task_process_that_dies_before_its_run_is_recorded_lost_at_once(
    make_docroot, middleware, tmp_path, docroot
):
    wrapper = tmp_path / "python"
    wrapper.write_text("#!/bin/sh\n"  # reads the tasks, but never starts a run
                       f'case "$*" in *reqcron.loading.child*) '
                       f'exec {sys.executable} "$@";; esac\n'
                       "exit 3\n")
    wrapper.chmod(0o755)
    root = make_docroot(PROBE, f'[reqcron]\npython = "{wrapper}"\n')
    app = middleware(hello, root)
    doc = docroot(root)
    (run, *_) = drive(app, lambda: [r for r in doc.store.runs("Tick") if r.status == "lost"],
                      message="the lost run in the history")
    assert "exited with code 3 before starting the run" in run.error
    assert run.end - run.created < 10  # not after the pending timeout


def test_run_now_starts_within_about_a_second(make_docroot, middleware, docroot):
    root = make_docroot("from reqcron import Task\nclass Reindex(Task):\n    pass\n")
    app = middleware(hello, root)
    request(app)
    doc = docroot(root)
    doc.run_now("Reindex")
    asked = time.monotonic()
    drive(app, lambda: [r for r in doc.store.runs("Reindex") if r.status == "ok"])
    assert time.monotonic() - asked < 5


def test_without_watchdog_a_cheap_stat_still_picks_up_changes(make_docroot, middleware, docroot):
    root = make_docroot("from reqcron import Task\nclass A(Task):\n    every = 3600\n")
    app = middleware(hello, root, watch=False)
    doc = docroot(root)
    drive(app, lambda: app.docroot is not None and "A" in app.docroot.tasks())
    write(root / "__tasks__.py", "from reqcron import Task\nclass B(Task):\n    every = 1\n")
    drive(app, lambda: [r for r in doc.store.runs("B") if r.status == "ok"],
          message="B, added with watch=False, to run")


def test_disable_stops_every_trigger_while_other_tasks_run_on(make_docroot, middleware, docroot):
    root = make_docroot("""
        from reqcron import Task
        class Tick(Task):  # the anchor: still enabled, on the same one-second slots
            every = 1
        class Off(Task):
            every = 1
    """)
    assert reqcron_cmd("disable", str(root), "Off").returncode == 0
    doc = docroot(root)

    def ticked(trigger):
        return [r for r in doc.store.runs("Tick", 1000)
                if r.trigger == trigger and r.status == "ok"]

    def skipped():  # coalesced: one row, its count of slots grows
        return sum(r.slots for r in doc.store.runs("Off", 1000) if r.status == "skipped")

    # Requests through the middleware.
    app = middleware(hello, root)
    drive(app, lambda: len(ticked("request")) >= 2, message="Tick to run from requests")
    by_requests = skipped()
    assert by_requests > 0  # a slot of Off passed with each of Tick's

    # `reqcron due`, with no requests coming.
    def due():
        proc = reqcron_cmd("due", str(root))
        assert proc.returncode == 0, proc.stderr
        assert "Off" not in proc.stdout
        return ticked("due") and skipped() > by_requests

    wait_for(due, timeout=15, message="Tick to run from `reqcron due`")
    by_due = skipped()

    # Crontab lines: `runtask --if-due`.
    def if_due():
        off = runtask(root, "--if-due", "Off")
        assert off.returncode in (0, 75), off.stderr
        assert runtask(root, "--if-due", "Tick").returncode == 0
        return ticked("cron") and skipped() > by_due

    wait_for(if_due, timeout=15, message="Tick to run from `runtask --if-due`")
    assert runtask(root, "Off").returncode == 75  # and by hand

    runs = doc.store.runs("Off", 1000)
    assert [(r.status, r.error) for r in runs] == [("skipped", "disabled")] * len(runs)
    assert not [r for r in runs if r.start is not None]  # no process ran it
    assert "skipped" in reqcron_cmd("history", str(root), "Off").stdout


def test_a_status_page_set_up_wrong_says_so_at_construction(make_docroot, middleware, caplog):
    root = make_docroot(PROBE)
    with pytest.raises(ValueError, match="must start with '/'"):
        ReqCron(hello, root, status_path="_reqcron", status_token="t")
    with caplog.at_level(logging.WARNING, logger="reqcron"):
        middleware(hello, root, status_path="/_reqcron")  # no token: off, and said
    assert any("status page is off" in r.getMessage() for r in caplog.records)


def test_a_request_without_path_info_still_checks_the_schedule(make_docroot, middleware):
    # PEP 3333 lets a server leave PATH_INFO out for the application's root.
    root = make_docroot("from reqcron import Task\nclass Hourly(Task):\n    every = 3600\n")
    mw = middleware(lambda environ, start_response: [b"ok"], root)
    wait_for(lambda: mw({}, None) and mw.docroot is not None
             and "Hourly" in mw.docroot.catalog().tasks, timeout=15,
             message="the worker to load the tasks")


def test_closing_with_a_task_still_running_leaves_it_to_finish_and_reaps_it(
        make_docroot, tmp_path):
    import gc
    import warnings

    from conftest import processes

    from reqcron import Docroot, ReqCron

    done = tmp_path / "done"
    root = make_docroot(f"""
        import pathlib, time
        from reqcron import Task

        class Long(Task):
            def run(self):
                time.sleep(2)
                pathlib.Path({str(done)!r}).write_text("done")
    """)
    with Docroot(root) as doc:
        doc.run_now("Long")
    made = [ReqCron(hello, root)]
    wait_for(lambda: request(made[0]) and processes("reqcron.runtask", str(root)),
             timeout=15, message="Long's process")
    (pid, *_) = processes("reqcron.runtask", str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made[0].close(timeout=0.1)  # gives up on it: it is detached and goes on
        made.clear()
        gc.collect()
    assert not [w for w in caught if "still running" in str(w.message)], caught
    wait_for(done.exists, timeout=30, message="Long to finish on its own")

    def reaped() -> bool:  # gone, not left a zombie of this process
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "X"
        except OSError:
            return True

    wait_for(reaped, timeout=15, message="its process reaped")
