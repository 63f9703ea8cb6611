"""Deferred calls: @delay, Task.delay and Result, run by real task processes on both stores."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import hello, popen, processes, reqcron_cmd, request, wait_for

import reqcron
from reqcron import Result, StateError
from reqcron.engine.stored_calls import Call, new_run
from reqcron.records import now

TASKS = """\
from reqcron import Task, delay

class Mail(Task):
    def run(self, to, copies=1):
        print("mail to", to)
        return {"to": to, "copies": copies}

@delay
def double(x):
    return 2 * x
"""


@pytest.fixture
def site(make_site, monkeypatch):
    """A DOCROOT on each store, made the process's DOCROOT for deferred calls."""
    def make(tasks: str = TASKS, settings: str = "") -> Path:
        root = make_site(tasks, "[reqcron]\n" + settings)
        monkeypatch.setenv("REQCRON_DOCROOT", str(root))
        return root

    return make


JOBS = """\
import os, time
from reqcron import delay

@delay
def add(a, b):
    return a + b

@delay
def fail():
    raise ValueError("the mail server said no")

@delay(timeout=1)
def hang():
    time.sleep(60)

@delay
def slow(path, seconds):
    with open(path, "a") as fh:
        fh.write(f"start {os.getpid()} {time.time()}\\n")
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(f"end {os.getpid()} {time.time()}\\n")

@delay(retries=2)
def flaky(path):
    with open(path, "a") as fh:
        fh.write("try\\n")
    if open(path).read().count("try") < 2:
        raise RuntimeError("first try fails")
    return "done"

@delay(retries=1)
def slow_retried(path, seconds):
    slow.function(path, seconds)

@delay(minutes=1 / 30)  # two seconds
def add_later(a, b):
    return a + b

@delay
def say(text):
    print(text)
    return os.getpid()

@delay
def die():
    print("about to die")
    os._exit(3)

@delay(retries=2)
def returns_a_set(path):
    with open(path, "a") as fh:
        fh.write("mailed\\n")
    return {1, 2}

def plain():
    pass
"""


def drain(root: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the DOCROOT's queued calls in a real task process, as the middleware starts one."""
    return subprocess.run([sys.executable, "-P", "-m", "reqcron.runtask", "--calls", str(root)],
                          capture_output=True, text=True, timeout=timeout)


# -- the call, the queue and the Result -------------------------------------------------


def test_a_call_runs_in_a_task_process_and_its_result_is_read_back(site, app_module):
    root = site()
    mod = app_module(JOBS)
    result = mod.add(2, 3)
    assert isinstance(result, Result) and isinstance(result.id, int)
    assert not result.is_ready() and result.status == "queued" and result.result is None
    assert drain(root).returncode == 0
    assert result.wait(5).is_ready()
    assert (result.status, result.result, result.has_error, result.error_message) == (
        "ok", 5, False, None)
    # Any process reads the same Result by id.
    other = subprocess.run(
        [sys.executable, "-c", "import sys, reqcron; r = reqcron.Result.get(sys.argv[1], "
         f"{result.id}); print(r.status, r.result)", str(root)],
        capture_output=True, text=True, timeout=30)
    assert other.stdout.split() == ["ok", "5"], other.stderr


def test_arguments_that_are_not_json_are_a_type_error_in_the_caller(site, app_module, docroot):
    root = site()
    mod = app_module(JOBS)
    for bad in (object(), {1: "int key"}, float("nan"), b"bytes"):
        with pytest.raises(TypeError, match="JSON"):
            mod.add(bad, 1)
    assert docroot(root).history() == []  # nothing was queued


def test_a_function_that_raises_has_its_traceback_in_the_result_and_the_history(site, app_module):
    root = site()
    result = app_module(JOBS).fail()
    drain(root)
    assert result.wait(5).has_error and result.status == "failed"
    assert result.error_message == "ValueError: the mail server said no"
    assert "raise ValueError" in result.traceback
    shown = reqcron_cmd("history", str(root))
    assert "fail()" in shown.stdout and "ValueError: the mail server said no" in shown.stdout


def test_a_call_past_its_timeout_is_stopped_and_recorded(site, app_module):
    root = site()
    result = app_module(JOBS).hang()
    begun = time.monotonic()
    drain(root)
    assert result.wait(5).status == "timeout"
    assert "timeout of 1 s" in result.error_message
    assert time.monotonic() - begun < 20


def test_a_failed_call_is_tried_again_after_a_back_off(site, app_module, tmp_path, docroot):
    root = site()
    tries = tmp_path / "tries"
    result = app_module(JOBS).flaky(str(tries))
    drain(root)
    run = docroot(root).get_run(result.id)
    assert (run.status, run.attempts) == ("queued", 1)  # back in the queue, with its error
    # Due again a back-off (2 s) after the failure, which came after the attempt's start
    # (not compared with now: a loaded machine may take longer than that to get here).
    assert "first try fails" in run.error and run.due >= run.start + 1.99
    wait_for(lambda: drain(root) and result.is_ready(), timeout=20,
             message="the second attempt")
    assert (result.status, result.result) == ("ok", "done")
    assert tries.read_text().count("try") == 2
    assert docroot(root).get_run(result.id).attempts == 2


def test_a_return_value_that_is_not_json_fails_the_call_without_retrying_it(site, app_module,
                                                                           tmp_path, docroot):
    root = site()
    log = tmp_path / "log"
    result = app_module(JOBS).returns_a_set(str(log))
    drain(root)
    assert result.wait(5).status == "failed"
    assert result.error_message.startswith("TypeError: the return value is a set")
    assert log.read_text() == "mailed\n"  # once: trying again would mail again
    assert docroot(root).get_run(result.id).attempts == 1


def test_only_functions_marked_with_delay_run_from_the_queue(site, app_module, tmp_path, docroot):
    root = site()
    app_module(JOBS)
    witness = tmp_path / "pwned"
    store = docroot(root).store
    ids = [store.add_run(new_run(Call(target, [f"touch {witness}"], {}, path=sys.path),
                                 now(), now()))
           for target in ("os:system", f"{app_module(JOBS).__name__}:plain", "json:nothing")]
    drain(root)
    for run_id in ids:
        run = docroot(root).get_run(run_id)
        assert run.status == "failed" and run.error.startswith("refused: "), run.error
    assert not witness.exists()


def test_a_function_a_task_process_cannot_import_is_refused_at_decoration():
    def outer():
        @reqcron.delay
        def inner():
            pass

    with pytest.raises(TypeError, match="module-level"):
        outer()
    main = type(sys)("__main__")
    exec("def job(): pass", main.__dict__)
    main.job.__module__ = "__main__"
    with pytest.raises(TypeError, match="__main__"):
        reqcron.delay(main.job)


def test_a_delay_takes_seconds_as_every_does(site, app_module, docroot):
    root = site()
    mod = app_module(f"""
        from reqcron import delay

        @delay(seconds=90, docroot={str(root)!r})
        def later():
            return 1
    """)
    begun = time.time()
    result = mod.later()
    run = docroot(root).get_run(result.id)
    assert begun + 90 - 0.01 <= run.due <= time.time() + 90
    with pytest.raises(ValueError, match="cannot be negative"):
        reqcron.delay(seconds=-1)


def test_a_lambda_is_refused_as_a_lambda(app_module):
    with pytest.raises(TypeError) as refused:
        app_module("from reqcron import delay\n\njob = delay()(lambda: 1)\n")
    message = str(refused.value)
    assert message.startswith("@delay cannot defer a lambda (in jobs_"), message
    assert "inside another function" not in message and "def" in message


def test_without_a_docroot_a_call_runs_inline_and_says_so_once(app_module, monkeypatch, caplog):
    monkeypatch.delenv("REQCRON_DOCROOT", raising=False)
    mod = app_module(JOBS)
    with caplog.at_level(logging.INFO, logger="reqcron"):
        result = mod.add(1, 2)
        failed = mod.fail()
    assert result.id is None and result.is_ready() and result.result == 3
    assert failed.has_error and failed.error_message == "ValueError: the mail server said no"
    assert sum("run inline" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(TypeError):
        mod.add(object(), 1)  # the same contract as a queued call


def test_the_eager_switch_runs_calls_inline_even_with_a_docroot(site, app_module, docroot):
    root = site()
    mod = app_module(JOBS)
    previous = reqcron.set_eager(True)
    try:
        assert mod.add(20, 22).result == 42
    finally:
        reqcron.set_eager(previous)
    assert docroot(root).history() == []


def test_a_state_that_cannot_be_written_fails_the_call_in_the_caller(make_docroot, app_module,
                                                                      monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    root = make_docroot(TASKS, f'[reqcron]\nstate_dir = "{blocker}/state"\n')
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    with pytest.raises(StateError):
        app_module(JOBS).add(1, 2)


def test_task_delay_runs_the_task_with_arguments(site, docroot):
    root = site()
    sys.path.insert(0, str(root))
    try:
        from reqcron.loading.loader import load_tasks

        mail = type(load_tasks(root, None).tasks["Mail"])
        result = mail.delay("a@example.org", copies=2)
    finally:
        sys.path.remove(str(root))
    drain(root)
    assert result.wait(5).result == {"to": "a@example.org", "copies": 2}
    (run,) = docroot(root).history("Mail")
    assert run.trigger == "call" and "mail to a@example.org" in run.output


def test_a_call_deferred_by_a_task_goes_to_its_docroot(site, docroot):
    root = site(TASKS + textwrap.dedent("""
        class Kick(Task):
            def run(self):
                return double(21).id
    """))
    from conftest import runtask

    assert runtask(root, "Kick").returncode == 0
    (kick,) = docroot(root).history("Kick")
    call_id = json.loads(kick.return_value)
    drain(root)
    assert Result.get(root, call_id).wait(5).result == 42
    assert docroot(root).get_run(call_id).task == "__tasks__:double"


def test_finished_calls_are_pruned_after_result_days(site, app_module):
    root = site(settings="result_days = 0.00004\n")  # 3.5 s
    mod = app_module(JOBS)
    first = mod.add(1, 1)
    drain(root)
    assert first.wait(5).result == 2
    time.sleep(3.6)  # older than result_days: that is what is tested
    second = mod.add(2, 2)
    drain(root)
    assert second.wait(5).result == 4
    with pytest.raises(LookupError):
        Result.get(root, first.id)
    with pytest.raises(LookupError, match="result_days"):
        Result(root, first.id).is_ready()


def test_calls_that_share_a_process_keep_their_own_output_and_failures(site, app_module, docroot):
    root = site(settings="max_processes = 1\n")
    mod = app_module(JOBS)
    first, dead, hung, last = mod.say("first words"), mod.die(), mod.hang(), mod.say("last")
    drain(root)
    runs = {r.id: r for r in docroot(root).history(limit=10)}
    assert runs[first.id].output.strip() == "first words" and first.status == "ok"
    assert runs[dead.id].status == "failed" and "code 3" in runs[dead.id].error
    assert runs[dead.id].output.strip() == "about to die"
    assert runs[hung.id].status == "timeout" and "hang" in runs[hung.id].traceback
    assert runs[last.id].output.strip() == "last" and last.status == "ok"
    # One process ran the first call; the call after each death got a fresh one.
    assert last.result != first.result


# -- a process that dies ------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_sigkill_of_the_process_running_a_call_retries_or_loses_it(site, app_module, tmp_path,
                                                                   retries, docroot):
    root = site()
    mod = app_module(JOBS)
    log = tmp_path / "log"
    result = (mod.slow_retried if retries else mod.slow)(str(log), 3)
    drainer = popen([sys.executable, "-P", "-m", "reqcron.runtask", "--calls",
                                str(root)])
    wait_for(lambda: log.exists() and "start" in log.read_text(), timeout=15,
             message="the call to start")
    drainer.kill()
    drainer.wait(10)
    wait_for(lambda: not processes("reqcron.runtask", "--calls", str(root)), timeout=10,
             message="the call's process to die with its supervisor")
    docroot(root).reap()
    if not retries:
        assert result.is_ready() and result.status == "lost"
        assert "died" in result.error_message
        return
    run = docroot(root).get_run(result.id)
    assert run.status == "queued" and run.attempts == 1
    wait_for(lambda: drain(root) and result.is_ready(), timeout=30, message="the retry")
    assert result.status == "ok"
    starts = [line for line in log.read_text().splitlines() if line.startswith("start")]
    ends = [line for line in log.read_text().splitlines() if line.startswith("end")]
    assert len(starts) == 2 and len(ends) == 1  # the killed try never ended; no overlap
    assert float(starts[1].split()[2]) > float(starts[0].split()[2]) + 0.5


# -- through the middleware -------------------------------------------------------------


def test_a_call_deferred_in_a_request_runs_after_its_response_without_another_request(
        site, app_module, middleware, tmp_path):
    root = site()
    mod = app_module(JOBS)
    log = tmp_path / "log"
    closed: list[float] = []
    results: list[Result] = []

    def app(environ, start_response):
        results.append(mod.slow(str(log), 0))
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"a"
            time.sleep(0.5)  # a drainer already running must not take the call meanwhile
            yield b"b"

        class Body:
            def __iter__(self):
                return body()

            def close(self):
                closed.append(time.time())

        return Body()

    mw = middleware(app, root)
    # A first call leaves a task process lingering for more.
    assert request(mw)[0] == "200 OK"
    results[0].wait(20)
    assert request(mw)[0] == "200 OK"
    results[1].wait(20)  # no further request needed
    starts = [float(line.split()[2]) for line in log.read_text().splitlines()
              if line.startswith("start")]
    assert len(starts) == 2 and starts[1] >= closed[1]


def test_a_call_with_a_delay_waits_for_its_time(site, app_module, middleware, docroot):
    root = site()
    mod = app_module(JOBS)
    mw = middleware(hello, root)
    results = []

    def app(environ, start_response):
        results.append(mod.add_later(1, 2))
        return hello(environ, start_response)

    mw.app = app
    begun = time.time()
    request(mw)
    mw.app = hello
    run = docroot(root).get_run(results[0].id)
    assert run.due >= begun + 2 - 0.01
    wait_for(lambda: request(mw) and results[0].is_ready(), timeout=20,
             message="the delayed call")
    assert docroot(root).get_run(results[0].id).start >= begun + 2 - 0.01
    assert results[0].result == 3


def test_reqcron_due_runs_pending_calls(site, app_module):
    root = site()
    result = app_module(JOBS).add(4, 5)
    out = reqcron_cmd("due", str(root), "--wait")
    assert "deferred calls" in out.stdout, out.stdout + out.stderr
    assert result.wait(5).result == 9


def test_max_processes_caps_the_processes_running_calls(site, app_module, tmp_path):
    root = site(settings="max_processes = 2\n")
    mod = app_module(JOBS)
    log = tmp_path / "log"
    results = [mod.slow(str(log), 0.3) for _ in range(6)]
    drainers = [popen([sys.executable, "-P", "-m", "reqcron.runtask", "--calls",
                                  str(root)]) for _ in range(4)]
    for d in drainers:
        d.wait(60)
    assert all(r.is_ready() and r.status == "ok" for r in results)
    events = []
    for line in log.read_text().splitlines():
        kind, pid, at = line.split()
        events.append((float(at), kind == "start"))
    running = peak = 0
    for _, start in sorted(events):
        running += 1 if start else -1
        peak = max(peak, running)
    assert peak == 2


# -- a real server ------------------------------------------------------------------------

BURST_APP = """
import json
import sys
sys.path.insert(0, {here!r})
import burstjobs
from reqcron import ReqCron

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    if environ["PATH_INFO"] == "/burst":
        return [json.dumps([burstjobs.note(i).id for i in range(1000)]).encode()]
    return [b"ok"]

application = ReqCron(app, {docroot!r})
"""

BURST_JOBS = """
import os
from reqcron import delay

@delay
def note(i):
    with open({log!r}, "a") as fh:
        fh.write(f"{{i}}\\n")
"""


def test_a_burst_of_1000_calls_under_gunicorn_runs_each_once_in_few_processes(
        make_docroot, tmp_path, serve, docroot):
    from realserver import BIN

    root = make_docroot(TASKS, "[reqcron]\nmax_processes = 2\n")
    log = tmp_path / "notes"
    (tmp_path / "burstjobs.py").write_text(BURST_JOBS.format(log=str(log)))
    (tmp_path / "app.py").write_text(BURST_APP.format(here=str(tmp_path), docroot=str(root)))
    server = serve(str(BIN / "gunicorn"), "--workers", "3", "--bind", "127.0.0.1:{port}",
                   "app:application")
    try:
        import urllib.request

        with urllib.request.urlopen(server.url + "burst", timeout=30) as resp:
            ids = json.loads(resp.read())
        assert len(set(ids)) == 1000
        slowest = 0.0

        def served_and_done() -> bool:
            nonlocal slowest
            begun = time.monotonic()
            with urllib.request.urlopen(server.url, timeout=10) as resp:
                assert resp.read() == b"ok"
            slowest = max(slowest, time.monotonic() - begun)
            return log.exists() and len(log.read_text().splitlines()) >= 1000

        wait_for(served_and_done, timeout=90, interval=0.1, message="1,000 calls to run")
        assert slowest < 1.0, f"a request took {slowest:.2f} s while the calls ran"
        written = sorted(int(n) for n in log.read_text().split())
        assert written == list(range(1000)), "a call ran twice or not at all"
        doc = docroot(root)
        wait_for(lambda: all(r.status == "ok" for r in doc.store.runs(None, 2000)),
                 timeout=20, message="every call to be recorded ok")
        runs = doc.store.runs(None, 2000)
        assert len(runs) == 1000 and all(r.attempts == 1 for r in runs)
        spans: dict[int, list[float]] = {}
        for r in runs:
            span = spans.setdefault(r.pid, [r.start, r.end])
            span[0], span[1] = min(span[0], r.start), max(span[1], r.end)
        edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
        running = peak = 0
        for _, step in edges:
            running += step
            peak = max(peak, running)
        assert peak <= 2, f"{peak} task processes ran calls at once (max_processes = 2)"
        doc.close()
    finally:
        server.stop()
        wait_for(lambda: not processes("reqcron.runtask", "--calls", str(root)), timeout=15,
                 message="the task processes to end")


def test_calls_show_on_the_status_page_with_their_function_and_arguments(
        site, app_module, middleware):
    root = site()
    result = app_module(JOBS).add(40, 2)
    drain(root)
    result.wait(5)
    mw = middleware(hello, root, status_path="/_reqcron", status_token="s3cret")
    auth = {"HTTP_AUTHORIZATION": "Bearer s3cret"}
    status, body = request(mw, "/_reqcron", QUERY_STRING="format=json", **auth)
    assert status.startswith("200")
    (shown,) = [h for h in json.loads(body)["history"] if h["id"] == result.id]
    assert shown["call"]["label"] == "add(40, 2)" and shown["call"]["args"] == [40, 2]
    assert shown["status"] == "ok" and shown["return_value"] == 42
    status, page = request(mw, "/_reqcron", **auth)
    assert b"add(40, 2)" in page


def test_reqcron_list_shows_the_queue(site, app_module):
    root = site()
    mod = app_module(JOBS)
    for n in range(3):
        mod.add(n, n)
    listed = reqcron_cmd("list", str(root))
    assert "deferred calls: 3 queued, 0 running" in listed.stdout, listed.stdout
    data = json.loads(reqcron_cmd("list", str(root), "--json").stdout)
    assert data["calls"] == {"queued": 3, "running": 0}


HANGS_AT_IMPORT = """\
import os, time
from reqcron import delay

while os.path.exists({flag!r}):  # the task process finds the flag: its import hangs
    time.sleep(0.05)

@delay(timeout=1)
def quick():
    return "done"
"""


def test_a_calls_timeout_covers_the_import_of_its_module(site, app_module, tmp_path):
    root = site("", "max_processes = 1\n")
    flag = tmp_path / "hang"
    mod = app_module(HANGS_AT_IMPORT.format(flag=str(flag)))
    flag.write_text("")  # imported here already: only task processes hang now
    try:
        result = mod.quick()
        begun = time.monotonic()
        drained = drain(root)
        assert result.wait(5).status == "timeout", (result.status, drained.stderr)
        assert "timeout of 1 s" in (result.error_message or "")
        assert time.monotonic() - begun < 20  # STOP_GRACE after the timeout, not for good
    finally:
        flag.unlink(missing_ok=True)  # whatever still hangs goes on and ends


def test_sigterm_lets_the_current_call_finish_and_leaves_the_rest_queued(site, app_module,
                                                                         tmp_path):
    root = site("", "max_processes = 1\n")
    mod = app_module(JOBS)
    log = tmp_path / "log"
    first, second = mod.slow(str(log), 2), mod.add(1, 2)
    drainer = popen([sys.executable, "-m", "reqcron.runtask", "--calls", str(root)],
                    cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: log.exists() and "start" in log.read_text(), timeout=20,
             message="the first call to start")
    drainer.send_signal(15)
    _, err = drainer.communicate(timeout=30)
    assert drainer.returncode == 0, err
    assert first.wait(5).status == "ok"  # finished, within its own time
    assert "end" in log.read_text()
    assert second.status == "queued"  # not started: it waits for the next process
