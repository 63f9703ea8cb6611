"""Real server processes for the tests: started on a free port, polled until they answer,
always stopped; and the check that such a server ran each slot of a task once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import wait_for

from reqcron import Docroot

BIN = Path(sys.executable).parent

#: A task that reports the sockets its process holds, its session and its parent.
SLOT_TASKS = """
import os
from reqcron import Task

class Tick(Task):
    every = 1
    def run(self):
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return {"sockets": [l for l in links if l.startswith("socket:")],
                "sid": os.getsid(0), "ppid": os.getppid()}
"""

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real server process in tmp_path: started, polled until ready, always stopped."""

    def __init__(self, command: list[str], cwd: Path, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log = cwd / "server.log"
        self._log = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(
                command, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True)
        except BaseException:
            self._log.close()
            raise
        try:
            wait_for(self._ready, timeout=30, message=f"the server to listen ({self.log})")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()}")
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def load(self, seconds: float, clients: int = 8, max_requests: int = 200_000) -> set[bytes]:
        """Send concurrent requests for ``seconds`` (bounded in count); return the bodies seen."""
        bodies: list[bytes] = []
        deadline = time.monotonic() + seconds

        def client() -> None:
            for _ in range(max_requests // clients):
                if time.monotonic() > deadline:
                    return
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    assert resp.status == 200
                    bodies.append(resp.read())

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(bodies) > 20 * seconds, f"only {len(bodies)} requests served"
        return set(bodies)

    def descendants(self) -> list[tuple[int, int, str]]:
        """(pid, ppid, state) of every process under the server."""
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                table[int(entry)] = (int(fields[1]), fields[0])
        found, frontier = [], [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, state) in table.items():
                if ppid == parent:
                    found.append((pid, ppid, state))
                    frontier.append(pid)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def assert_each_slot_ran_once(root: Path, seconds: float) -> None:
    with Docroot(root) as doc:
        wait_for(
            lambda: not doc.store.runs("Tick", 10000, ("pending", "running")),
            timeout=20,
            message="the last runs to finish",
        )
        runs = sorted(doc.store.runs("Tick", 10000), key=lambda r: r.slot)
    slots = [r.slot for r in runs]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    assert len(slots) >= 2, f"only {len(slots)} runs in {seconds} s"
    # None lost between the first and the last: a run that came late stands for the slots
    # it coalesced (how many runs a busy machine started in the window does not matter).
    assert sum(r.slots for r in runs) == round(slots[-1] - slots[0]) + runs[0].slots
    assert all(r.status == "ok" for r in runs), [(r.status, r.error) for r in runs]
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(abs(g - round(g)) < 1e-6 and g >= 1 for g in gaps)  # whole slots, none twice
    for run in runs:
        seen = json.loads(run.return_value)
        assert seen["sockets"] == [], "a task process holds a socket"
        assert seen["sid"] == seen["ppid"]  # its runtask leads a session of its own
