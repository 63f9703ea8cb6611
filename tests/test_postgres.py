"""Several hosts on one PostgreSQL state: the same guarantees across hosts, and a database that
goes away.  "Hosts" are DOCROOT copies with their own state_dirs, one site in one database."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import drive, hello, reqcron_cmd, request, runtask, start_runtask, wait_for

from reqcron import Docroot
from reqcron.errors import StateError
from reqcron.store.rows import LEASE

TASKS = """
import os, time
from reqcron import Task

class Tick(Task):
    every = 1
    def run(self):
        with open(os.environ["RUNS_FILE"], "a") as fh:
            fh.write(f"{self.docroot.name} {time.time()}\\n")

class Slow(Task):
    def run(self):
        open(os.environ["RUNS_FILE"] + ".slow", "w").close()
        time.sleep(30)
"""


@pytest.fixture
def hosts(tmp_path, pg_url, monkeypatch):
    """Make host DOCROOTs of one site: same tasks, own state_dir each."""
    monkeypatch.setenv("RUNS_FILE", str(tmp_path / "runs"))

    def make(count=2, url=None, tasks=TASKS):
        roots = []
        for n in range(count):
            root = tmp_path / f"host{n}"
            root.mkdir()
            (root / "__tasks__.py").write_text(tasks)
            (root / "reqcron.toml").write_text(
                f'[reqcron]\nstate = "{url or pg_url}"\nsite = "shop"\n'
                f'state_dir = "{tmp_path / f"state{n}"}"\n')
            roots.append(root)
        return roots

    return make


def test_each_slot_runs_once_across_hosts_racing_due(hosts, tmp_path):
    roots = hosts(3)
    Docroot(roots[0]).due()  # the site's schedule starts now
    runs = tmp_path / "runs"
    # Six racers claim until Tick has run 4 times (whoever wins each slot), 60 s at most:
    # a condition, not a count in a fixed window, which a loaded machine would miss.
    loops = [subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom reqcron import Docroot\n"
         "from reqcron.run.spawn import Spawner\nfrom reqcron.records import Trigger\n"
         "doc, sp = Docroot(sys.argv[1]), Spawner()\n"
         "def ran():\n"
         f"    return len(open({str(runs)!r}).read().splitlines()) if os.path.exists("
         f"{str(runs)!r}) else 0\n"
         "deadline = time.monotonic() + 60\n"
         "while ran() < 4 and time.monotonic() < deadline:\n"
         "    [sp.start(doc, c) for c in doc.due(Trigger.DUE)]\n    time.sleep(0.01)\n"
         "while sp.reap(): time.sleep(0.05)\n", str(root)]) for root in roots for _ in range(2)]
    for loop in loops:
        assert loop.wait(60) == 0
    doc = Docroot(roots[0])
    history = doc.history("Tick", limit=1000)
    slots = [r.slot for r in history if r.status == "ok"]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    assert len(slots) >= 3, [(r.status, r.error) for r in history]
    written = (tmp_path / "runs").read_text().splitlines()
    assert len(written) == len(slots), written  # each ok run wrote once, no run unrecorded
    doc.close()


def test_no_overlap_across_hosts_and_a_killed_run_frees_its_lock(hosts, tmp_path):
    first, second = hosts(2)
    running = start_runtask(first, "Slow")
    wait_for(lambda: (tmp_path / "runs.slow").exists(), message="Slow to start on host0")
    other = runtask(second, "Slow")
    assert other.returncode == 75 and "still running" in other.stderr
    running.send_signal(signal.SIGKILL)  # the supervisor: its task dies with it
    running.communicate()
    killed_at = time.monotonic()
    # The database ends the dead supervisor's session, and once its lease runs out (a
    # live run cut off from the database keeps it) another host runs the task...
    (tmp_path / "runs.slow").unlink()
    tries: list[int] = []

    def started_on_second() -> bool:
        again = start_runtask(second, "Slow")
        wait_for(lambda: again.poll() is not None or (tmp_path / "runs.slow").exists(),
                 message="Slow to start or be refused on host1")
        if (tmp_path / "runs.slow").exists():
            again.kill()
            again.communicate()
            return True
        again.communicate()
        tries.append(again.returncode)
        return False

    wait_for(started_on_second, timeout=LEASE + 20, interval=0.5,
             message="Slow to start on host1")
    assert time.monotonic() - killed_at < LEASE + 15
    assert set(tries) <= {75}  # refused while the lease ran, never run beside
    # ...and the dead runs are recorded as failed, whichever host looks (once the last
    # one's lease ran out too).
    def history_once_reaped() -> list[dict[str, Any]] | None:
        found = json.loads(reqcron_cmd("history", str(first), "Slow", "--json").stdout)
        return found if found[0]["status"] != "running" else None

    history = wait_for(history_once_reaped, timeout=LEASE + 20, interval=0.5,
                       message="host1's killed run recorded")
    statuses = [r["status"] for r in history]
    assert statuses[0] == "failed" and "died" in history[0]["error"]  # the one host1 ran
    assert statuses[-1] == "failed" and "died" in history[-1]["error"]  # the one killed
    assert set(statuses[1:-1]) == {"skipped"}  # host1's refusals, host0 running or leased


def test_enable_disable_and_run_now_are_seen_by_every_host(hosts):
    first, second = hosts(2)
    assert reqcron_cmd("disable", str(first), "Tick").returncode == 0
    doc = Docroot(second)
    assert doc.is_enabled("Tick") is False
    doc.run_now("Slow")
    (claim,) = [c for c in Docroot(first).due() if c.task == "Slow"]
    assert claim.trigger == "run_now"
    doc.close()


def test_the_password_is_never_shown(hosts, pg_url):
    secret_url = pg_url.replace("root@", "root:hunter2@")
    (root,) = hosts(1, url=secret_url)
    for args in (("list",), ("list", "--json"), ("check",), ("history",)):
        proc = reqcron_cmd(args[0], str(root), *args[1:])
        assert "hunter2" not in proc.stdout + proc.stderr
    assert "root@127.0.0.1" in reqcron_cmd("list", str(root)).stdout


def test_an_unreachable_database_is_one_clear_error_and_the_site_serves(
    hosts, middleware, caplog
):
    (root,) = hosts(1, url="postgresql://root@127.0.0.1:9/nowhere")
    for command in ("check", "list"):
        proc = reqcron_cmd(command, str(root))
        assert proc.returncode == 2, proc.stderr
        assert "cannot be reached" in proc.stderr and "127.0.0.1" in proc.stderr
        assert "Traceback" not in proc.stderr
    app = middleware(hello, root, poll=0.2)
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        wait_for(lambda: request(app)[0] == "200 OK" and caplog.records, timeout=15,
                 message="the cause logged")
        checks = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            app._wake_at = 0  # a check on every request
            assert request(app) == ("200 OK", b"hello")
            checks += 1
    assert checks > 10
    assert len([r for r in caplog.records if "cannot be reached" in r.getMessage()]) == 1


def test_a_missing_driver_is_one_sentence_naming_the_extra(hosts, monkeypatch):
    (root,) = hosts(1)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StateError, match=r"pip install 'reqcron\[postgres\]'"):
        Docroot(root).due()


def test_a_site_of_several_hosts_keeps_one_history_across_a_moved_release(hosts, tmp_path):
    (root,) = hosts(1)
    assert runtask(root, "Tick").returncode == 0
    moved = tmp_path / "release2"
    shutil.copytree(root, moved)
    history = json.loads(reqcron_cmd("history", str(moved), "--json").stdout)
    assert [r["task"] for r in history] == ["Tick"]


class Proxy:
    """A TCP proxy in front of the database that a test can cut and restore."""

    def __init__(self, upstream: tuple[str, int]):
        import socket
        import threading

        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b) -> None:
        try:
            while (data := a.recv(65536)) and not self.cut.is_set():
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def sever(self) -> None:
        """Drop every connection and refuse new ones."""
        self.cut.set()
        for s in self.sockets:
            try:
                s.shutdown(2)
            except OSError:
                pass

    def restore(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.sever()
        self.listener.close()


def test_runs_resume_without_a_twice_run_slot_when_the_database_comes_back(
    hosts, pg_url, middleware, tmp_path, caplog
):
    from urllib.parse import urlsplit

    real = urlsplit(pg_url)
    proxy = Proxy((real.hostname or "127.0.0.1", real.port or 5432))
    try:
        (root,) = hosts(1, url=f"postgresql://root@127.0.0.1:{proxy.port}{real.path}")
        app = middleware(hello, root, poll=0.2)
        runs = tmp_path / "runs"
        drive(app, lambda: runs.exists() and runs.read_text().count("\n") >= 2,
              message="Tick running through the proxy")
        with caplog.at_level(logging.ERROR, logger="reqcron"):
            proxy.sever()
            before = runs.read_text().count("\n")
            drive(app, lambda: any("cannot be reached" in r.getMessage() for r in caplog.records),
                  message="the outage noticed")
            assert request(app) == ("200 OK", b"hello")  # served all along
            proxy.restore()
            drive(app, lambda: runs.read_text().count("\n") >= before + 2, timeout=30,
                  message="runs to resume")
        doc = Docroot(root)
        slots = [r.slot for r in doc.history("Tick", limit=1000) if r.slot is not None]
        assert len(slots) == len(set(slots)), "a slot ran twice"
        doc.close()
    finally:
        proxy.close()


def test_a_sqlite_state_is_copied_into_postgresql_with_one_command(
    make_docroot, pg_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("RUNS_FILE", str(tmp_path / "runs"))
    root = make_docroot(TASKS, '[reqcron]\nsite = "shop"\n')
    assert runtask(root, "Tick").returncode == 0
    assert reqcron_cmd("disable", str(root), "Slow").returncode == 0
    position = Docroot(root).states()["Tick"].next_due
    secret = pg_url.replace("root@", "root:hunter2@")
    copied = reqcron_cmd("state", "copy", str(root), secret)
    assert copied.returncode == 0, copied.stderr
    assert "copied 2 tasks and 1 runs" in copied.stdout and "hunter2" not in copied.stdout
    again = reqcron_cmd("state", "copy", str(root), pg_url)
    assert again.returncode == 2 and "nothing was copied" in again.stderr
    (root / "reqcron.toml").write_text(f'[reqcron]\nsite = "shop"\nstate = "{pg_url}"\n')
    doc = Docroot(root)
    assert [r.task for r in doc.history()] == ["Tick"] and doc.is_enabled("Slow") is False
    # The schedule came along: the same position, nothing due before it (a slow
    # machine may well pass it by now, so the check is made at a moment before it).
    assert doc.states()["Tick"].next_due == position
    assert doc.due(at=position - 0.5) == []
    doc.close()


def test_a_server_follows_a_changed_state_url_without_a_restart(hosts, pg_url, middleware,
                                                                 tmp_path):
    (root,) = hosts(1, url="postgresql://root@127.0.0.1:9/nowhere")
    app = middleware(hello, root, poll=0.2)
    for _ in range(5):
        assert request(app) == ("200 OK", b"hello")
    toml = (root / "reqcron.toml").read_text().replace("postgresql://root@127.0.0.1:9/nowhere",
                                                        pg_url)
    (root / "reqcron.toml").write_text(toml)
    runs = tmp_path / "runs"
    drive(app, lambda: runs.exists(), timeout=20, message="a run once the URL is right")
    # And away again: nothing is claimed against a state that cannot be reached.
    from reqcron.store.postgres import PostgresStore

    store = PostgresStore(pg_url, "shop")
    (root / "reqcron.toml").write_text(toml.replace(pg_url, "postgresql://root@127.0.0.1:9/x"))
    wait_for(lambda: request(app)[0] == "200 OK" and app.docroot is not None
             and "127.0.0.1:9" in app.docroot.state_location, message="the new URL in use")
    before = {r.id for r in store.runs("Tick", 1000)}
    for _ in range(20):
        app._wake_at = 0  # a check on every request
        assert request(app)[0] == "200 OK"
    assert {r.id for r in store.runs("Tick", 1000)} == before
    store.close()
