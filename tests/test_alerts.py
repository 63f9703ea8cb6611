"""notify and ping: a real SMTP server and a real HTTP server on loopback receive them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import read_history, reqcron_cmd, runtask, start_runtask, wait_for, write

from reqcron.engine.stored_calls import Call, new_run
from reqcron.records import now


class Mailbox:
    """An aiosmtpd server on a loopback port that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list = []
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - its API
                mailbox.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


class Hooks:
    """An HTTP server on a loopback port that records every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                hooks.seen.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _record  # noqa: N815 - http.server's names

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.stop()


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.stop()


FLAKY = """\
import pathlib
from reqcron import Task

class Report(Task):
    notify = {notify!r}
    ping = {ping!r}

    def run(self):
        print("making the report")
        if pathlib.Path({flag!r}).exists():
            raise RuntimeError("the report database is gone")
        return "ok"
"""


def test_a_failing_task_mails_once_then_once_when_it_recovers(
        make_docroot, mailbox, tmp_path, docroot):
    flag = tmp_path / "broken"
    flag.write_text("")
    root = make_docroot(FLAKY.format(notify="mailto:ops@example.org", ping=None, flag=str(flag)),
                        f'[reqcron]\nsmtp = "127.0.0.1:{mailbox.port}"\n')
    for _ in range(3):
        assert runtask(root, "Report").returncode == 1
    assert len(mailbox.messages) == 1  # the next failures are damped
    mail = mailbox.messages[0]
    assert mail["To"] == "ops@example.org" and "Report failed" in mail["Subject"]
    body = mail.get_payload(decode=True).decode()
    first = docroot(root).history("Report")[-1]
    assert f"reqcron history {root} Report --run {first.id}" in body
    assert "RuntimeError: the report database is gone" in body
    assert socket.gethostname() in body and str(root) in body
    assert first.notified == "failed: sent to mailto:ops@example.org"

    flag.unlink()
    assert runtask(root, "Report").returncode == 0
    assert runtask(root, "Report").returncode == 0
    assert len(mailbox.messages) == 2  # one for the recovery, none for the good run after
    assert "Report recovered" in mailbox.messages[1]["Subject"]


def test_a_failure_told_for_a_run_taken_for_dead_is_corrected_when_its_own_end_lands(
        make_docroot, mailbox, tmp_path, docroot):
    """A reaper that took a live run for dead (its session lost, say) mails "failed"; when
    the run's own good end lands from the host's spool, a second mail corrects it."""
    from reqcron.engine import spool
    from reqcron.records import Run, Status, Trigger
    from reqcron.store import Attempt

    root = make_docroot(FLAKY.format(notify="mailto:ops@example.org", ping=None,
                                     flag=str(tmp_path / "never")),
                        f'[reqcron]\nsmtp = "127.0.0.1:{mailbox.port}"\n')
    doc = docroot(root)
    doc.catalog()
    run_id = doc.store.add_run(Run(task="Report", trigger=Trigger.MANUAL, status=Status.RUNNING,
                                   created=now() - 5, start=now() - 5, lock="gone"))
    attempt = Attempt.of(doc.store.get_run(run_id))
    assert doc.reap() == 1  # no lock held, no lease, nothing spooled: taken for dead
    wait_for(lambda: len(mailbox.messages) == 1, timeout=15, message="the failure mail")
    assert "Report failed" in mailbox.messages[0]["Subject"]

    spool.keep(spool.spool_dir(doc.settings.state_dir), attempt,
               {"status": Status.OK, "end": now(), "exit_code": 0, "return_value": "'ok'"})
    doc.reap()
    wait_for(lambda: len(mailbox.messages) == 2, timeout=15, message="the correcting mail")
    mail = mailbox.messages[1]
    assert "Report corrected" in mail["Subject"]
    assert "ended ok after all" in mail.get_payload(decode=True).decode()
    wait_for(lambda: "corrected: sent to" in (doc.store.get_run(run_id).notified or ""),
             timeout=15, message="the correction recorded on the run")
    run = doc.store.get_run(run_id)
    assert (run.status, run.error) == (Status.OK, None)
    doc.reap()  # nothing more to tell: no third mail, from any notifying thread
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "reqcron-notify"],
             timeout=15, message="the notifying threads to end")
    assert len(mailbox.messages) == 2


def test_webhooks_get_json_and_a_callable_gets_the_same(make_docroot, hooks, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    got = tmp_path / "got.json"
    (tmp_path / "receiver.py").write_text(
        "import json\n"
        f"def receive(data):\n    open({str(got)!r}, 'w').write(json.dumps(data))\n")
    root = make_docroot(
        FLAKY.format(notify=[f"{hooks.url}/hook"], ping=None, flag=str(flag)),
        '[reqcron]\nnotify = "receiver:receive"\n')
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert runtask(root, "Report", env=env).returncode == 1
    ((method, path, body),) = hooks.seen
    data = json.loads(body)
    assert (method, path) == ("POST", "/hook")
    assert data["event"] == "failed" and data["task"] == "Report" and data["status"] == "failed"
    assert data["error"] == "RuntimeError: the report database is gone"
    assert json.loads(got.read_text()) == data


def test_ping_follows_the_healthchecks_convention(make_docroot, hooks, tmp_path):
    flag = tmp_path / "broken"
    root = make_docroot(FLAKY.format(notify=None, ping=f"{hooks.url}/ping/abc", flag=str(flag)))
    assert runtask(root, "Report").returncode == 0
    flag.write_text("")
    assert runtask(root, "Report").returncode == 1
    calls = [(m, p) for m, p, _ in hooks.seen]
    # In order: a start that came after the end would leave the check "started".
    assert calls == [("GET", "/ping/abc/start"), ("POST", "/ping/abc"),
                     ("GET", "/ping/abc/start"), ("POST", "/ping/abc/fail")]
    bodies = {p: b for m, p, b in hooks.seen if m == "POST"}
    assert b"making the report" in bodies["/ping/abc"]
    assert b"the report database is gone" in bodies["/ping/abc/fail"]


def test_an_endpoint_that_hangs_or_refuses_costs_only_its_timeout(make_docroot, tmp_path,
                                                                  monkeypatch, docroot):
    flag = tmp_path / "broken"
    flag.write_text("")
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(5)  # accepts connections and never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()
    try:
        targets = [f"http://127.0.0.1:{hang.getsockname()[1]}/hook",
                   f"http://127.0.0.1:{refused}/hook"]
        root = make_docroot(FLAKY.format(notify=targets, ping=None, flag=str(flag)))
        monkeypatch.setenv("REQCRON_NOTIFY_TIMEOUT", "1")
        begun = time.monotonic()
        assert runtask(root, "Report").returncode == 1
        assert time.monotonic() - begun < 8
    finally:
        hang.close()
    (run,) = docroot(root).history("Report")
    assert run.status == "failed"  # the run's own status is untouched
    assert run.notified.count("NOT sent") == 2, run.notified
    assert "no answer within" in run.notified and "refused" in run.notified.lower()


@pytest.mark.parametrize("attribute, value", [("notify", "bogus"), ("notify", 42),
                                              ("notify", "nosuchmodule:send"),
                                              ("ping", "ftp://example.org")])
def test_a_bad_notify_or_ping_is_a_load_error_naming_the_task(
        make_docroot, attribute, value, docroot):
    root = make_docroot(f"from reqcron import Task\nclass Report(Task):\n"
                        f"    cron = '@daily'\n    {attribute} = {value!r}\n"
                        "class Other(Task):\n    cron = '@daily'\n")
    checked = reqcron_cmd("check", str(root))
    assert checked.returncode == 2
    assert "Report" in checked.stderr and attribute in checked.stderr, checked.stderr
    assert "__tasks__.py:4:" in checked.stderr  # the line that sets it
    assert "Other" in docroot(root).catalog().tasks


def test_a_bad_notify_setting_is_a_config_error(make_docroot):
    root = make_docroot("from reqcron import Task\n", '[reqcron]\nnotify = "mailto:nobody"\n')
    checked = reqcron_cmd("check", str(root))
    assert checked.returncode == 2 and "notify" in checked.stderr


def test_a_run_whose_process_was_killed_notifies_that_it_died(make_docroot, hooks, docroot):
    root = make_docroot(f"""
        import time
        from reqcron import Task

        class Stuck(Task):
            notify = "{hooks.url}/hook"
            def run(self):
                time.sleep(60)
    """)
    proc = start_runtask(root, "Stuck")
    wait_for(lambda: any(r.status == "running" for r in read_history(root, "Stuck")),
             message="the run to start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    reqcron_cmd("list", str(root))  # finds the dead run
    wait_for(lambda: hooks.seen, timeout=15, message="the notification")
    data = json.loads(hooks.seen[0][2])
    assert data["status"] == "failed" and "died" in data["error"]


def test_a_fixed_file_that_keeps_failing_sends_nothing_more(make_docroot, hooks, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    root = make_docroot(FLAKY.format(notify=f"{hooks.url}/hook", ping=None, flag=str(flag)))
    runtask(root, "Report")
    write(root / "__tasks__.py", FLAKY.format(notify=f"{hooks.url}/hook", ping=None,
                                              flag=str(flag)) + "# touched\n")
    runtask(root, "Report")
    assert len(hooks.seen) == 1


def test_a_slot_recorded_failed_because_the_file_broke_notifies(make_docroot, hooks, docroot):
    source = f"""
        from reqcron import Task

        class Tick(Task):
            every = 1
            notify = "{hooks.url}/hook"
    """
    root = make_docroot(source)
    doc = docroot(root)
    doc.due()  # the task is seen: its first slot is a second away
    write(root / "__tasks__.py", source + "\nthis is not python\n")
    wait_for(lambda: reqcron_cmd("due", str(root)) and read_history(root, "Tick"),
             timeout=15, message="a slot recorded while the file is broken")
    wait_for(lambda: hooks.seen, timeout=15, message="the notification")
    data = json.loads(hooks.seen[0][2])
    assert data["task"] == "Tick" and data["status"] == "failed"
    assert "does not load" in data["error"]


def test_a_dead_run_found_by_a_process_for_calls_is_still_told_about(make_docroot, hooks,
                                                                     docroot):
    """The process running deferred calls leaves tasks' dead runs to one that notifies."""
    root = make_docroot(f"""
        import time
        from reqcron import Task, delay

        class Stuck(Task):
            notify = "{hooks.url}/hook"
            def run(self):
                time.sleep(60)

        @delay
        def nothing():
            return None
    """)
    proc = start_runtask(root, "Stuck")
    wait_for(lambda: any(r.status == "running" for r in read_history(root, "Stuck")),
             message="the run to start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    doc = docroot(root)
    doc.store.add_run(new_run(Call("__tasks__:nothing", [], {}), now(), now()))
    drained = subprocess.run([sys.executable, "-m", "reqcron.runtask", "--calls", str(root)],
                             cwd=root, capture_output=True, text=True, timeout=60)
    assert drained.returncode == 0, drained.stderr
    assert [r.status for r in doc.store.runs("Stuck")] == ["running"]  # not its to record
    reqcron_cmd("list", str(root))  # finds the dead run, and tells
    wait_for(lambda: hooks.seen, timeout=15, message="the notification")
    assert json.loads(hooks.seen[0][2])["status"] == "failed"


def test_a_run_past_warn_after_says_so_once_and_is_marked_while_it_runs(
        make_docroot, hooks, tmp_path):
    go = tmp_path / "go"
    root = make_docroot(f"""
        import pathlib, time
        from reqcron import Task

        class Export(Task):
            notify = "{hooks.url}/hook"
            warn_after = 1
            def run(self):
                while not pathlib.Path({str(go)!r}).exists():
                    time.sleep(0.05)
                return "exported"
    """)
    proc = start_runtask(root, "Export")
    try:
        wait_for(lambda: hooks.seen, timeout=20, message="the running long message")
        data = json.loads(hooks.seen[0][2])
        assert (data["event"], data["task"], data["status"]) == ("running_long", "Export",
                                                                 "running")
        listed = reqcron_cmd("list", str(root), "--json")
        (task,) = json.loads(listed.stdout)["tasks"]
        assert "running long" in task["marks"] and listed.returncode == 0, listed.stdout
    finally:
        go.touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "still running after warn_after" in err
    (run,) = read_history(root, "Export")
    assert run.status == "ok" and run.notified == f"running_long: sent to {hooks.url}/hook"
    assert len(hooks.seen) == 1  # once, and a good end after nothing bad says nothing
    (task,) = json.loads(reqcron_cmd("list", str(root), "--json").stdout)["tasks"]
    assert "running long" not in task["marks"]


class Drip:
    """An HTTP endpoint that answers GETs at once and POSTs one byte every half second for a
    minute: each read is quick, the whole never ends (a socket timeout alone never fires)."""

    def __init__(self) -> None:
        self.posts = threading.Event()
        self.stop = threading.Event()
        drip = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                drip.posts.set()
                self.send_response(200)
                self.send_header("Content-Length", "120")
                self.end_headers()
                for _ in range(120):
                    if drip.stop.wait(0.5):
                        return
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_dripping_ping_endpoint_holds_neither_the_next_run_nor_its_process(
        make_docroot, tmp_path, monkeypatch):
    drip = Drip()
    try:
        monkeypatch.setenv("REQCRON_NOTIFY_TIMEOUT", "2")
        root = make_docroot(f"""
            from reqcron import Task

            class Export(Task):
                overlap = False
                ping = {drip.url!r}
                def run(self):
                    return "exported"
        """)
        began = time.monotonic()
        first = start_runtask(root, "Export")
        assert drip.posts.wait(30), "the end ping never came"
        # The first runtask now waits on the ping: its task lock is let go already, so a
        # second run of this overlap = False task runs instead of being skipped.
        second = runtask(root, "Export")
        assert second.returncode == 0, second.stderr
        out, err = first.communicate(timeout=30)
        assert first.returncode == 0, err
        assert "no answer within 2 s" in err
        # Far less than the minute the endpoint drips: the whole send has a deadline.
        assert time.monotonic() - began < 30
        assert [r.status for r in read_history(root, "Export")] == ["ok", "ok"]
    finally:
        drip.close()
