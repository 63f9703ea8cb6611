"""The wall clock set back, in real processes whose clock the test moves.

The processes under test (a WSGI server, `reqcron due`, the `runtask`
processes they start) run with tests/timeshim on PYTHONPATH: its
sitecustomize adds the offset written in a file to their wall clock, and
re-reads the file while they run.  Their monotonic clock stays real, as it
does when an administrator (or NTP) sets the system clock back.  This test
process keeps the real clock: it reads the state's history, not the clock.

Debian cron's rules, which the SPEC follows: after the clock is set back,
interval and wildcard schedules go on from the new time at once; a
fixed-time slot that already ran does not run again unless the clock went
back by three hours or more.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import popen, reqcron_cmd, wait_for

from reqcron import Docroot

SHIM = Path(__file__).resolve().parent / "timeshim"
UTC_TOML = '[reqcron]\ntimezone = "UTC"\n'

class Clock:
    """The offset, in seconds, that the shimmed processes add to the real wall clock."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0.0
        self.set(0.0)

    def set(self, offset: float) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(repr(offset))
        os.replace(partial, self.path)  # a reader never sees half a number
        self.offset = offset

    def now(self) -> float:
        """The wall clock of the shimmed processes."""
        return time.time() + self.offset


@pytest.fixture
def clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Give every process this test starts the shimmed wall clock."""
    made = Clock(tmp_path / "clock")
    path = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("REQCRON_TEST_CLOCK_FILE", str(made.path))
    return made


class Server:
    """tests/timeshim/serve.py in a subprocess: ReqCron in front of a tiny app."""

    def __init__(self, root: Path, workdir: Path):
        port_file = workdir / "port"
        self.log = workdir / "server.log"
        with open(self.log, "ab") as log:
            self.proc = popen(
                [sys.executable, str(SHIM / "serve.py"), str(root), str(port_file)],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(lambda: port_file.exists() or self.proc.poll() is not None,
                 message="the server to listen")
        assert self.proc.poll() is None, self.log.read_text()
        self.url = f"http://127.0.0.1:{port_file.read_text()}/"

    def get(self) -> bytes:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.read()

    def drive(self, until, timeout: float = 15.0, message: str = "condition"):
        """Send requests until ``until()`` is truthy, like a site with steady traffic."""

        def step():
            assert self.get() == b"hello"
            return until()

        return wait_for(step, timeout=timeout, interval=0.05, message=message)

    def stop(self) -> None:
        self.proc.terminate()  # serve.py closes the middleware, which reaps its children
        self.proc.wait(timeout=20)


@pytest.fixture
def serve(tmp_path: Path, clock: Clock):
    servers: list[Server] = []

    def start(root: Path) -> Server:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        servers.append(Server(root, workdir))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def runs_of():
    """Read a DOCROOT's history from the state, without touching its schedule."""
    opened: list[Docroot] = []

    def runs(root: Path, task: str):
        if not opened or opened[-1].path != root.resolve():
            opened.append(Docroot(root))
        return opened[-1].store.runs(task, limit=1000)  # newest first

    yield runs
    for doc in opened:
        doc.close()


def due_until(root: Path, until, timeout: float = 20.0, message: str = "condition"):
    """Run `reqcron due --wait` (a crontab's `* * * * *` line, faster) until ``until()``."""

    def step():
        proc = reqcron_cmd("due", str(root), "--wait")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return until()

    return wait_for(step, timeout=timeout, interval=0.05, message=message)


def last_id(runs) -> int:
    return max((r.id for r in runs), default=0)


def test_the_shim_moves_the_wall_clock_of_child_processes_only(clock):
    clock.set(-3600.0)
    script = "import time; print(time.time(), time.time_ns(), time.monotonic())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    wall, wall_ns, mono = map(float, proc.stdout.split())
    assert abs(wall - clock.now()) < 5 and abs(wall_ns / 1e9 - wall) < 1
    assert abs(mono - time.monotonic()) < 5  # the system-wide monotonic clock is untouched


def test_a_wildcard_cron_task_takes_its_next_minute_in_the_time_set_back(
    make_docroot, clock, serve, runs_of
):
    root = make_docroot("""
        from reqcron import Task
        class Every2(Task):
            every = 2
        class Minutely(Task):
            cron = "* * * * *"
    """, UTC_TOML)
    server = serve(root)
    server.drive(lambda: [r for r in runs_of(root, "Every2") if r.status == "ok"],
                 message="a claim on the real clock")
    before = last_id(runs_of(root, "Minutely") + runs_of(root, "Every2"))
    # Back by just under an hour, to 5 s before a minute boundary of the new time.
    real = time.time()
    boundary = (math.floor((real - 3600) / 60) + 1) * 60
    if boundary - (real - 3600) < 5:
        boundary += 60
    clock.set(boundary - 5 - real)
    assert -3600 <= clock.offset < -3540
    server.drive(
        lambda: [r for r in runs_of(root, "Minutely") if r.slot == boundary and r.status == "ok"],
        message=f"Minutely's slot at {boundary} in the time set back",
    )
    after = [r for r in runs_of(root, "Minutely") if r.id > before]
    assert [(r.slot, r.trigger) for r in after] == [(boundary, "request")]  # once, that slot


def test_an_every_task_keeps_running_after_the_clock_is_set_back_an_hour(
    make_docroot, clock, serve, runs_of
):
    root = make_docroot("""
        from reqcron import Task
        class Every2(Task):
            every = 2
    """, UTC_TOML)
    server = serve(root)
    server.drive(lambda: [r for r in runs_of(root, "Every2") if r.status == "ok"],
                 message="a claim on the real clock")
    before = runs_of(root, "Every2")
    clock.set(-3600.0)
    server.drive(
        lambda: len([r for r in runs_of(root, "Every2")
                     if r.id > last_id(before) and r.status == "ok"]) >= 3,
        timeout=10, message="three runs of Every2 after the clock went back an hour",
    )
    after = [r for r in runs_of(root, "Every2") if r.id > last_id(before)]
    assert all(r.slot < min(b.slot for b in before) for r in after)  # in the time set back
    assert len({r.slot for r in after}) == len(after)


def fixed_time_site(make_docroot, clock: Clock) -> tuple[Path, float]:
    """A DOCROOT with a daily task at slot S, and the shimmed clock 3 s before S."""
    slot = (math.floor(time.time() / 60) + 120) * 60.0  # any minute will do: 2 h ahead
    when = time.gmtime(slot)
    root = make_docroot(f"""
        from reqcron import Task
        class Fixed(Task):
            cron = "{when.tm_min} {when.tm_hour} * * *"
        class Tick(Task):
            every = 1
    """, UTC_TOML)
    clock.set(slot - 3 - time.time())  # seen first before S, so S is its first slot
    return root, slot


def run_fixed_slot_then_set_back(root: Path, slot: float, clock: Clock, runs_of,
                                 back_to: float) -> int:
    """Trigger until S ran, then set the clock back to ``back_to``; return the last run id."""
    (ran,) = due_until(root, lambda: [r for r in runs_of(root, "Fixed") if r.status == "ok"],
                       message="Fixed's slot S")
    assert ran.slot == slot and ran.trigger == "due"
    before = last_id(runs_of(root, "Fixed") + runs_of(root, "Tick"))
    assert clock.now() - back_to > 2  # clearly more than the engine's slack
    clock.set(back_to - time.time())
    return before


def test_a_fixed_time_slot_that_ran_does_not_run_again_when_the_clock_goes_back_a_little(
    make_docroot, clock, runs_of
):
    root, slot = fixed_time_site(make_docroot, clock)
    before = run_fixed_slot_then_set_back(root, slot, clock, runs_of, back_to=slot - 3)
    ticks = [r.slot for r in runs_of(root, "Tick") if r.id <= before]
    # The anchor: Tick, every second, ran again past S in the time set back.
    due_until(root, lambda: [r for r in runs_of(root, "Tick")
                             if r.id > before and r.slot >= slot + 1 and r.status == "ok"],
              message="Tick to pass S a second time")
    again = [r.slot for r in runs_of(root, "Tick") if r.id > before]
    assert min(again) < max(ticks)  # the schedules did follow the clock back
    assert [(r.slot, r.status) for r in runs_of(root, "Fixed")] == [(slot, "ok")]


def test_a_fixed_time_slot_runs_again_when_the_clock_goes_back_a_day(
    make_docroot, clock, runs_of
):
    root, slot = fixed_time_site(make_docroot, clock)
    before = run_fixed_slot_then_set_back(root, slot, clock, runs_of, back_to=slot - 86400 - 3)
    # Three hours or more is a real change of time: yesterday's S comes again, and runs.
    due_until(root, lambda: [r for r in runs_of(root, "Fixed") if r.id > before],
              message="Fixed's slot S a day earlier")
    assert [(r.slot, r.status) for r in runs_of(root, "Fixed")] == [
        (slot - 86400, "ok"), (slot, "ok")]


def test_a_host_is_told_apart_by_its_boot_not_only_its_name(make_docroot, caplog):
    """Two machines of one name (cloned VMs, containers named alike on other kernels) do
    not share a clock offset: one that booted later, its offset larger, would make the
    other think its clock went back at every look."""
    import logging

    from reqcron.schedule import clock as wall
    from reqcron.store import CLOCK_KEY

    name = os.uname().nodename
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pytest.skip("this kernel tells no boot id")
    assert CLOCK_KEY == f"clock:{name}:{boot}"

    root = make_docroot("""
        from reqcron import Task
        class Every2(Task):
            every = 2
    """, UTC_TOML)
    with Docroot(root) as doc, caplog.at_level(logging.WARNING, logger="reqcron"):
        doc.due()
        # What a machine of the same name that booted an hour later writes under the name
        # alone (as reqcron did before): its offset an hour larger than this host's.
        doc.store.set_meta(f"clock:{name}", repr(wall.offset() + 3600))
        doc.pulse()
        doc.due()
    assert not [r for r in caplog.records if "set back" in r.getMessage()]
