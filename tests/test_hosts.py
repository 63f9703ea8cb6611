"""Several hosts of one site, each a real gunicorn with 3 workers, on one PostgreSQL state.

A "host" is a DOCROOT copy with a state_dir of its own, served by its own gunicorn; every
host names the same `site` in the same database.  Each slot runs once across the hosts under
steady traffic, and a host killed whole (master, workers and task processes) has its run
recorded as died and its lock freed, and comes back without running anything twice.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import processes, reqcron_cmd, wait_for
from realserver import BIN, Server, free_port

from reqcron.store.rows import LEASE

TASKS = """
import os, time
from reqcron import Task

class Tick(Task):
    every = 1
    overlap = True  # a slot claimed twice runs twice, not "skipped"
    def run(self):
        with open(os.environ["RUNS_FILE"], "a") as fh:
            fh.write(f"{self.docroot.name} {time.time():.3f}\\n")

class Slow(Task):
    overlap = False
    def run(self):
        with open(os.environ["RUNS_FILE"] + ".slow", "a") as fh:
            fh.write(f"{self.docroot.name} {os.getpid()}\\n")
        time.sleep(60)
"""

APP = """
import os
from reqcron import ReqCron

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]

application = ReqCron(hello, {docroot!r}, poll=0.2)
"""

WORKERS = 3


# -- helpers -------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Pids of the live processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def history(root: Path, task: str) -> list[dict[str, Any]]:
    """`reqcron history ROOT TASK --json --limit 1000`, newest first."""
    proc = reqcron_cmd("history", str(root), task, "--json", "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def lines(path: Path) -> list[tuple[str, float]]:
    """The (host, number) lines a task appended to ``path``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        host, value = line.split()
        out.append((host, float(value)))
    return out


class Load:
    """Client threads sending GETs to one server until stopped; connection errors counted."""

    def __init__(self, port: int, clients: int = 2):
        self.port = port
        self.ok = 0
        self.failed = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                with self._mutex:
                    if resp.status == 200:
                        self.ok += 1
                        self.pids.add(int(body))
                    else:
                        self.failed += 1
            except (OSError, http.client.HTTPException):
                with self._mutex:
                    self.failed += 1
                self._stop.wait(0.05)
            finally:
                conn.close()
            self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


class Host:
    """One DOCROOT copy of the site and the gunicorn that serves it (restartable)."""

    def __init__(self, tmp_path: Path, n: int, pg_url: str):
        self.tmp_path = tmp_path
        self.name = f"host{n}"
        self.root = tmp_path / self.name
        self.root.mkdir()
        (self.root / "__tasks__.py").write_text(TASKS)
        (self.root / "reqcron.toml").write_text(
            f'[reqcron]\nstate = "{pg_url}"\nsite = "shop"\n'
            f'state_dir = "{tmp_path / f"state{n}"}"\n')
        self.server: Server | None = None
        self.servers: list[Server] = []
        self.starts = 0

    def start(self) -> Server:
        self.starts += 1
        appdir = self.tmp_path / f"app-{self.name}-{self.starts}"  # a log per start
        appdir.mkdir()
        (appdir / "app.py").write_text(textwrap.dedent(APP.format(docroot=str(self.root))))
        port = free_port()
        command = [str(BIN / "gunicorn"), "--workers", str(WORKERS), "--bind",
                   f"127.0.0.1:{port}", "--graceful-timeout", "5", "app:application"]
        self.server = Server(command, appdir, port)
        self.servers.append(self.server)
        return self.server

    def task_pids(self) -> list[int]:
        """runtask supervisors, their task children and catalog readers of this DOCROOT."""
        return processes(f" {self.root} ")

    def kill(self) -> list[int]:
        """SIGKILL the whole host at once: gunicorn master, workers and task processes."""
        assert self.server is not None
        master = self.server.proc.pid
        victims = set(group_pids(master)) | {master} | set(self.task_pids())
        os.killpg(master, signal.SIGKILL)  # no worker spawns anything more
        for pid in victims | set(self.task_pids()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.server.proc.wait(10)
        # A dying process's cmdline reads empty before it turns zombie, so task_pids() alone
        # may call it gone too early: wait on the victims' own state as well.
        wait_for(lambda: not group_pids(master) and not self.task_pids()
                 and not any(alive(pid) for pid in victims), timeout=10,
                 message=f"every process of {self.name} to be gone")
        return sorted(victims)

    def teardown(self) -> None:
        # The task processes first: a worker stopping gracefully waits for its children.
        for pid in self.task_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for server in self.servers:
            server.stop()
        for pid in self.task_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self) -> str:
        if self.server is None or not self.server.log.exists():
            return ""
        return self.server.log.read_text(errors="replace")[-2000:]


@pytest.fixture
def site(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[Callable[[int], list[Host]]]:
    """Make hosts of one site; stop their servers and kill their task processes afterwards."""
    monkeypatch.setenv("RUNS_FILE", str(tmp_path / "runs"))
    made: list[Host] = []

    def make(count: int = 2) -> list[Host]:
        hosts = [Host(tmp_path, n, pg_url) for n in range(count)]
        made.extend(hosts)
        return hosts

    yield make
    for host in made:
        host.teardown()


# -- 1. steady traffic on two hosts: each slot once ----------------------------------------


def test_two_hosts_under_load_run_each_slot_once(site, tmp_path):
    hosts = site(2)
    for host in hosts:
        host.start()
    runs_file = tmp_path / "runs"

    begun = time.time()
    loads = [Load(host.server.port, clients=2) for host in hosts]
    try:
        wait_for(lambda: time.time() - begun >= 8, timeout=12, interval=0.2,
                 message="8 s of traffic")
    finally:
        for load in loads:
            load.stop()
    ended = time.time()

    for host, load in zip(hosts, loads, strict=True):
        assert load.failed == 0, f"{host.name}: {load.failed} requests failed\n{host.log_tail()}"
        assert load.ok > 40, f"{host.name}: only {load.ok} requests served"
        assert len(load.pids) >= 2, f"{host.name}: the load reached one worker only"

    # The runs claimed while requests came have all ended.
    done = wait_for(
        lambda: (h := history(hosts[0].root, "Tick"))
        and not [r for r in h if r["status"] in ("pending", "running")] and h,
        timeout=20, message="the last Tick runs to end")
    statuses = Counter(r["status"] for r in done)
    assert set(statuses) == {"ok"}, [(r["status"], r["error"]) for r in done
                                    if r["status"] != "ok"]
    # Both hosts read the same history.
    assert [r["id"] for r in history(hosts[1].root, "Tick")] == [r["id"] for r in done]

    slots = [r["slot"] for r in done]
    assert None not in slots
    twice = [s for s, n in Counter(slots).items() if n > 1]
    assert not twice, f"slots run more than once: {twice}"

    written = lines(runs_file)
    assert len(written) == len(done), (
        f"{len(written)} lines written by {len(done)} ok runs: a run ran twice or went unrecorded")
    # Which host wins a slot is a race, so no share is asserted: CI once saw 8 of 8 on one
    # host. That the other host takes over is shown by the test of a host killed whole.
    assert {h for h, _ in written} <= {"host0", "host1"}

    # A run about every second while requests came: no gap of more than a few seconds.
    times = sorted(epoch(s) for s in slots)
    assert len(times) >= 5, f"only {len(times)} runs in {ended - begun:.1f} s"
    assert times[0] - begun <= 3, f"the first slot came {times[0] - begun:.1f} s into the load"
    assert ended - times[-1] <= 3, f"no slot in the last {ended - times[-1]:.1f} s of the load"
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= 3, f"a gap of {max(gaps):.1f} s between slots while requests came"
    assert min(gaps) >= 1 - 1e-6, f"two slots {min(gaps):.3f} s apart"


# -- 2. a host killed whole ---------------------------------------------------------------


def test_a_host_killed_whole_frees_its_lock_and_comes_back_without_duplicates(
        site, tmp_path, docroot):
    a, b = site(2)
    a.start()
    b.start()
    runs_file = tmp_path / "runs"
    slow_file = tmp_path / "runs.slow"

    # Slow, asked for by run_now, starts through host A's requests (B gets none yet).
    doc_a = docroot(a.root)
    doc_b = docroot(b.root)
    loads: list[Load] = []  # every one stopped, also when an assertion fails half way
    try:
        wait_for(lambda: doc_a.store.state("Slow") is not None, timeout=15,
                 message="the site's tasks to be known")
        doc_a.run_now("Slow")
        load_a = Load(a.server.port, clients=2)
        loads.append(load_a)
        try:
            first = wait_for(lambda: lines(slow_file), timeout=15,
                             message=f"Slow to start on host0\n{a.log_tail()}")
            assert [h for h, _ in first] == ["host0"]
            task_pid = int(first[0][1])
            (killed,) = wait_for(
                lambda: [r for r in history(a.root, "Slow") if r["status"] == "running"],
                timeout=10, message="Slow's run to be recorded as running")
            assert killed["trigger"] == "run_now"

            # While A runs it, B does not start a second one: the lock is held across hosts.
            load_b = Load(b.server.port, clients=2)
            loads.append(load_b)
            doc_b.run_now("Slow")
            wait_for(lambda: [r for r in history(b.root, "Slow") if r["status"] == "skipped"],
                     timeout=10, message="host1's Slow run to be skipped")
            assert len(lines(slow_file)) == 1

            # Kill host A whole while B serves.
            victims = a.kill()
        finally:
            load_a.stop()
        killed_at = time.monotonic()
        assert task_pid in victims and not alive(task_pid)

        # The run is recorded as died, within a bound: the database ended its sessions,
        # and its lease (renewed by its supervisor while it lived) ran out.
        def died() -> dict[str, Any] | None:
            (run,) = [r for r in history(b.root, "Slow") if r["id"] == killed["id"]]
            return run if run["status"] == "failed" else None

        run = wait_for(died, timeout=LEASE + 15,
                       message="the killed run to be recorded as failed")
        assert time.monotonic() - killed_at < LEASE + 10
        assert "died" in (run["error"] or ""), run

        # The lock is free: a new run_now of Slow starts on host B.
        doc_b.run_now("Slow")
        second = wait_for(lambda: len(lines(slow_file)) >= 2 and lines(slow_file), timeout=15,
                          message=f"Slow to start on host1\n{b.log_tail()}")
        assert [h for h, _ in second] == ["host0", "host1"]
        started_b = wait_for(
            lambda: [r for r in history(b.root, "Slow") if r["status"] == "running"],
            timeout=10, message="host1's Slow run to be recorded as running")
        assert len(started_b) == 1 and started_b[0]["id"] > killed["id"]

        # Host A comes back: it serves and schedules, and runs nothing twice.  B pauses
        # meanwhile, so the next Tick slots are A's to take (B's warm workers would
        # otherwise win them all, whoever is faster).
        load_b.stop()
        back = time.time()
        server = a.start()
        load_a = Load(server.port, clients=2)
        loads.append(load_a)
        try:
            wait_for(lambda: [t for h, t in lines(runs_file) if h == "host0" and t > back],
                     timeout=15, message=f"host0 to run Tick again\n{a.log_tail()}")
            load_b = Load(b.server.port, clients=2)  # both serve again
            loads.append(load_b)
            wait_for(lambda: len(load_a.pids) >= 2, timeout=10,
                     message="the restarted host's workers to serve")
            # Some more steady traffic on both, then look.
            wait_for(lambda: time.time() - back >= 4, timeout=10, interval=0.2,
                     message="4 s of traffic")
        finally:
            load_a.stop()
            load_b.stop()
        assert load_a.failed == 0, a.log_tail()
        assert load_b.failed == 0, b.log_tail()
    finally:
        for load in loads:
            load.stop()
        doc_a.close()
        doc_b.close()

    assert len(lines(slow_file)) == 2, "the restarted host started Slow again"
    slow = history(a.root, "Slow")
    assert [r["status"] for r in slow] == ["running", "skipped", "failed"], slow
    ticks = history(a.root, "Tick")
    slots = [r["slot"] for r in ticks if r["slot"] is not None]
    twice = [s for s, n in Counter(slots).items() if n > 1]
    assert not twice, f"slots run more than once: {twice}"
    # A line per run that started (a Tick killed with host A may have written and died).
    started = [r for r in ticks if r["status"] in ("ok", "failed", "running")]
    assert len(lines(runs_file)) <= len(started)
    after = [r for r in ticks if r["status"] == "ok" and r["slot"] and epoch(r["slot"]) > back]
    assert len(after) >= 3, [(r["status"], r["error"], r["slots"]) for r in ticks[:8]]
