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
