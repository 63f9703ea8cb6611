"""No storm of processes: a process for deferred calls that fails (its state unreachable
from it, the database out of connections) pauses the next ones, doubling each time."""

from __future__ import annotations

import sys
import time

from conftest import hello, request, wait_for

from reqcron.engine.stored_calls import Call, new_run
from reqcron.records import now
from reqcron.run import spawn


def test_failing_processes_for_calls_back_off_instead_of_storming(
        make_docroot, middleware, docroot, tmp_path, monkeypatch):
    started = tmp_path / "started"
    wrapper = tmp_path / "python"
    # Reads the tasks as usual; a process for calls only counts itself and fails.
    wrapper.write_text("#!/bin/sh\n"
                       f'case "$*" in *--calls*) echo x >> {started}; exit 2;; esac\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    root = make_docroot("", f'[reqcron]\npython = "{wrapper}"\nmax_processes = 4\n')
    monkeypatch.setattr(spawn, "DRAINER_PAUSE", (1.0, 60.0))
    doc = docroot(root)
    for i in range(10):
        doc.store.add_run(new_run(Call("jobs:nothing", [i], {}), now(), now()))
    app = middleware(hello, root, poll=0.05)
    wait_for(lambda: request(app)[0] == "200 OK" and started.exists(), timeout=15,
             message="a first process for the calls")
    # Requests keep coming for 4 s: without a pause each look (every 50 ms) would start
    # up to 4 more; with it, 1 s then 2 s then 4 s apart.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert request(app)[0] == "200 OK"
        time.sleep(0.02)
    count = len(started.read_text().split())
    assert 1 <= count <= 8, f"{count} processes for calls were started in about 4 s"


def test_a_burst_of_deferring_requests_keeps_to_max_processes_while_they_start(
        make_docroot, app_module, middleware, tmp_path, monkeypatch):
    """Each request that defers a call looks again at once (its calls are released): the
    processes this worker started and that have not taken a slot yet count as started,
    else every look during their start would start max_processes more."""
    log = tmp_path / "spans"
    wrapper = tmp_path / "python"
    # Notes when each process for calls starts and ends; anything else runs as usual.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--calls*) echo "start $$ $(date +%s.%N)" >> {log};\n'
        f'  {sys.executable} "$@"; code=$?; echo "end $$ $(date +%s.%N)" >> {log};'
        ' exit $code;; esac\n'
        f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    root = make_docroot("", f'[reqcron]\npython = "{wrapper}"\nmax_processes = 2\n')
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    jobs = app_module("from reqcron import delay\n\n@delay\ndef add(a, b):\n    return a + b\n")
    results = []

    def app(environ, start_response):
        results.append(jobs.add(1, 2))
        return hello(environ, start_response)

    mw = middleware(app, root, poll=0.05)
    for _ in range(30):
        assert request(mw)[0] == "200 OK"
        time.sleep(0.03)
    assert [r.wait(60).result for r in results] == [3] * 30
    wait_for(lambda: log.read_text().count("start") == log.read_text().count("end"),
             timeout=60, message="the processes for calls to end")
    edges = sorted((float(at), 1 if kind == "start" else -1)
                   for kind, _, at in (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    starts = log.read_text().count("start")
    assert peak <= 2, f"{peak} processes for calls at once ({starts} started), max_processes = 2"
