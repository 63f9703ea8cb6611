"""Shared fixtures: isolated state, DOCROOTs made on the fly, real runtask processes.

Every fixture here closes what it opens (Docroots, middlewares, servers) at teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give every test its own state directory (inherited by its subprocesses)."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.delenv("REQCRON_DEBUG", raising=False)
    return home


#: The subprocesses `popen` started during the current test.
_started: list[subprocess.Popen[Any]] = []


def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen``, whose process is killed (if still running) and reaped, and whose
    pipes are closed, when the test ends, however it ends."""
    proc = subprocess.Popen(*args, **kwargs)
    _started.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _end_started() -> Iterator[None]:
    yield
    while _started:
        proc = _started.pop()
        if proc.returncode is None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def make_docroot(tmp_path: Path) -> Callable[..., Path]:
    """Write a DOCROOT with the given __tasks__.py (and reqcron.toml) source."""
    counter = [0]

    def make(tasks: str | None = None, toml: str | None = None, name: str | None = None) -> Path:
        counter[0] += 1
        root = tmp_path / (name or f"site{counter[0]}")
        root.mkdir()
        if tasks is not None:
            (root / "__tasks__.py").write_text(textwrap.dedent(tasks))
        if toml is not None:
            (root / "reqcron.toml").write_text(textwrap.dedent(toml))
        return root

    return make


@pytest.fixture(params=["sqlite", "postgres"])
def make_site(request: pytest.FixtureRequest, make_docroot: Callable[..., Path]
              ) -> Callable[..., Path]:
    """Write DOCROOTs on each store: SQLite, and PostgreSQL (a fresh database) as one site."""

    def make(tasks: str, toml: str = "[reqcron]\n") -> Path:
        if request.param == "postgres":
            url = request.getfixturevalue("pg_url")
            toml += f'state = "{url}"\nsite = "shop"\n'
        return make_docroot(tasks, toml)

    return make


@pytest.fixture
def docroot() -> Iterator[Callable[..., Any]]:
    """Open ``reqcron.Docroot``s (same arguments) that are all closed after the test."""
    from reqcron import Docroot

    opened: list[Docroot] = []

    def open_docroot(path: Path | str, **kwargs: Any) -> Docroot:
        doc = Docroot(path, **kwargs)
        opened.append(doc)
        return doc

    yield open_docroot
    for doc in opened:
        doc.close()


def read_history(root: Path | str, *args: Any, **kwargs: Any) -> Any:
    """``Docroot(root).history(...)`` read by a Docroot of its own, closed after (for polls)."""
    from reqcron import Docroot

    with Docroot(root) as doc:
        return doc.history(*args, **kwargs)


def last_run(root: Path | str, name: str) -> Any:
    """The newest run of task ``name`` in ``root``'s history."""
    return read_history(root, name, limit=1)[0]


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """Import a module of the app's own from ``source`` (a fresh name each time), from a
    folder on sys.path that task processes import it from too (a deferred call's path)."""
    import importlib
    import uuid

    folder = tmp_path / "app"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def make(source: str) -> Any:
        name = f"jobs_{uuid.uuid4().hex[:8]}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return importlib.import_module(name)

    return make


def write(path: Path, source: str) -> None:
    """Replace a file's content and make sure its mtime moves."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(source))
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def runtask(
    docroot: Path | str, *args: str, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m reqcron.runtask` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "reqcron.runtask", str(docroot), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_runtask(docroot: Path | str, *args: str) -> subprocess.Popen[str]:
    """Start the real `python -m reqcron.runtask` (ended with the test at the latest)."""
    return popen(
        [sys.executable, "-m", "reqcron.runtask", str(docroot), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reqcron_cmd(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m reqcron ...` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "reqcron", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The app under the middleware in tests."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def request(app: Callable[..., Any], path: str = "/", **extra: Any) -> tuple[str, bytes]:
    """Send one WSGI request to ``app``; return its status line and body."""
    environ = {"PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "", **extra}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return status[0], data


def drive(app: Callable[..., Any], until: Callable[[], Any], timeout: float = 15.0,
          message: str = "condition") -> Any:
    """Send requests until ``until()`` is truthy, like a site with steady traffic."""

    def step() -> Any:
        assert request(app)[0] == "200 OK"
        return until()

    return wait_for(step, timeout=timeout, interval=0.05, message=message)


@pytest.fixture
def middleware() -> Any:
    """Make ReqCron middlewares that are closed after the test."""
    from reqcron import ReqCron

    made: list[ReqCron] = []

    def make(*args: Any, **kwargs: Any) -> ReqCron:
        mw = ReqCron(*args, **kwargs)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start real servers (``{port}`` in the command becomes a free port), in ``cwd`` or
    tmp_path, each polled until it answers; all stopped after the test."""
    from realserver import Server, free_port

    servers: list[Server] = []

    def start(*command: str, cwd: Path | None = None) -> Server:
        port = free_port()
        server = Server([c.replace("{port}", str(port)) for c in command], cwd or tmp_path, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


#: The token of the status page that `status_app` serves.
STATUS_TOKEN = "s3cret-token"


def the_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The app under the status page's middleware in tests."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the app"]


@pytest.fixture
def status_app(site: Path, middleware: Any) -> Any:
    """`the_app` behind ReqCron on the test module's ``site``, its status page at /_reqcron."""
    return middleware(the_app, site, status_path="/_reqcron", status_token=STATUS_TOKEN)


#: The PostgreSQL server the PostgreSQL tests use (they create and drop their own databases).
PG_SERVER = os.environ.get("REQCRON_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL; fail (CI: REQCRON_REQUIRE_POSTGRES=1) or skip when it is not there."""
    try:
        import psycopg

        psycopg.connect(PG_SERVER, connect_timeout=3).close()
    except Exception as exc:
        message = (f"PostgreSQL is not reachable at {PG_SERVER} ({exc}); start one, or point "
                   "REQCRON_TEST_POSTGRES at one, to run the PostgreSQL tests")
        if os.environ.get("REQCRON_REQUIRE_POSTGRES"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return PG_SERVER


@pytest.fixture
def pg_url(pg_server: str) -> Any:
    """A fresh, empty database for one test; dropped afterwards."""
    import uuid

    import psycopg

    name = f"reqcron_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def processes(*words: str) -> list[int]:
    """Pids of the live processes whose command line contains every word (zombies have none)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(w in cmdline for w in words):
            found.append(int(entry))
    return found


def with_port(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Any]:
    """A TCP proxy in front of the test's PostgreSQL that a test can cut, stall and restore."""
    from urllib.parse import urlsplit

    from faultproxy import FaultProxy

    parts = urlsplit(pg_url)
    made = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield made
    made.close()
