"""ReqCronASGI: real servers (uvicorn workers, gunicorn with uvicorn workers) under Starlette,
FastAPI and Django, and the adapter in-process (asyncio, scope dicts) for the edge cases."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from realserver import BIN, SLOT_TASKS, assert_each_slot_ran_once

from reqcron import Docroot, ReqCron, Result
from reqcron.calls import serving
from reqcron.web.asgi import ReqCronASGI

TOKEN = "s3cret"

JOBS = """\
import os, time
from reqcron import delay

@delay
def add(a, b):
    return a + b

@delay
def stamp(path):
    with open(path, "a") as fh:
        fh.write(f"{time.time()}\\n")
    return os.getpid()
"""


def http_scope(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": [],
            "client": ("127.0.0.1", 40000), "server": ("testserver", 80), **extra}


def call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one request through ``app`` on a fresh event loop; return what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def is_held(root: Path, run_id: int) -> bool:
    doc = Docroot(root)
    try:
        run = doc.store.get_run(run_id)
        assert run is not None and run.due is not None
        return run.due > time.time() + 10  # held calls wait out deferred's HOLD (30 s)
    finally:
        doc.close()


@pytest.fixture
def jobs(app_module):
    """The app's module of deferred functions, importable by task processes too."""
    return app_module(JOBS)


@pytest.fixture(params=["fast", "following"])
def asgi(request, monkeypatch):
    """Make ReqCronASGI middlewares in both modes: without and with the per-request ContextVar."""
    made: list[ReqCronASGI] = []

    def make(app: Any, root: Path, **kwargs: Any) -> ReqCronASGI:
        monkeypatch.setattr(serving, "_used", False)  # as in an app with no @delay function
        mw = ReqCronASGI(app, root, **kwargs)
        if request.param == "following":
            mw.track_calls()
        assert mw._track == (request.param == "following")
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.close()


# -- in-process: the adapter ----------------------------------------------------------


def test_each_middleware_refuses_the_other_kind_of_app_in_one_sentence(make_docroot):
    from django.core.handlers.asgi import ASGIHandler
    from fastapi import FastAPI
    from starlette.applications import Starlette

    from reqcron.web.tender import is_async_app

    root = make_docroot(SLOT_TASKS)

    def wsgi_app(environ, start_response):
        return []

    async def asgi_app(scope, receive, send):
        pass

    with pytest.raises(TypeError, match="wraps ASGI 3 applications.*ReqCron instead"):
        ReqCronASGI(wsgi_app, root)
    for app in (asgi_app, Starlette(), FastAPI()):
        with pytest.raises(TypeError, match="is an ASGI one.*ReqCronASGI instead"):
            ReqCron(app, root)
        ReqCronASGI(app, root).close()
    assert is_async_app(ASGIHandler.__new__(ASGIHandler))  # made without settings
    with pytest.raises(ValueError, match="needs a DOCROOT"):
        ReqCronASGI(asgi_app)


def test_a_docroot_that_does_not_exist_is_logged_at_construction_and_the_app_served(
        tmp_path, asgi, caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    root = tmp_path / "typo"
    with caplog.at_level(logging.ERROR, logger="reqcron"):
        wrapped = asgi(app, root)
        said = [r.getMessage() for r in caplog.records]  # before any request
        assert len(said) == 1 and f"DOCROOT '{root}' does not exist" in said[0], said
        sent = call(wrapped, http_scope())
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"hello"


def test_lifespan_and_websocket_scopes_reach_the_app_untouched_and_wake_nothing(
        make_docroot, asgi):
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope, receive, send):
        seen.append((scope, receive, send))

    mw = asgi(app, make_docroot(SLOT_TASKS))

    async def receive():
        return {}

    async def send(message):
        pass

    for kind in ("lifespan", "websocket"):
        scope = {"type": kind, "asgi": {"version": "3.0"}}
        asyncio.run(mw(scope, receive, send))
        assert seen[-1] == (scope, receive, send)
        assert seen[-1][0] is scope and seen[-1][1] is receive and seen[-1][2] is send
    assert mw._thread is None  # neither started the worker: only HTTP requests do
    call(mw, http_scope())
    assert mw._thread is not None


def test_a_streaming_response_passes_through_message_by_message(make_docroot, asgi):
    chunks = [{"type": "http.response.body", "body": b"%d" % i, "more_body": True}
              for i in range(3)]
    messages = [{"type": "http.response.start", "status": 200, "headers": []}, *chunks,
                {"type": "http.response.body", "body": b"", "more_body": False}]

    async def app(scope, receive, send):
        for message in messages:
            await send(message)
            await asyncio.sleep(0)

    sent = call(asgi(app, make_docroot(SLOT_TASKS)), http_scope())
    assert len(sent) == len(messages) and all(a is b for a, b in zip(sent, messages, strict=True))


def test_an_app_that_raises_raises_unchanged_and_its_call_is_released(
        make_docroot, asgi, jobs):
    root = make_docroot(SLOT_TASKS)
    results = []

    async def app(scope, receive, send):
        results.append(jobs.add(1, 2))
        raise LookupError("the view broke")

    mw = asgi(app, root)
    with pytest.raises(LookupError, match="the view broke"):
        call(mw, http_scope())
    assert results[0].wait(30).result == 3  # released at once: no hold to sit out


def test_a_call_deferred_in_an_async_view_is_held_until_the_body_is_sent(
        make_docroot, asgi, jobs, tmp_path):
    root = make_docroot(SLOT_TASKS)
    log = tmp_path / "log"
    seen: dict[str, Any] = {}

    async def app(scope, receive, send):
        result = jobs.stamp(str(log))
        seen["id"] = result.id
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen["held after start"] = is_held(root, result.id)
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await asyncio.sleep(0.3)  # a task process must not take the call meanwhile
        seen["held while streaming"] = is_held(root, result.id)
        await send({"type": "http.response.body", "body": b"b"})
        seen["sent"] = time.time()

    mw = asgi(app, root)
    call(mw, http_scope())
    assert seen["held after start"] and seen["held while streaming"]
    result = Result(root, seen["id"]).wait(30)
    assert result.status == "ok"
    assert float(log.read_text().split()[0]) >= seen["sent"]


def test_a_call_deferred_in_a_websocket_goes_to_the_docroot_unheld(make_docroot, asgi, jobs):
    root = make_docroot(SLOT_TASKS)
    results = []

    async def app(scope, receive, send):
        results.append(jobs.add(4, 5))  # a connection may last hours: nothing to wait for

    mw = asgi(app, root)

    async def nothing(*args):
        return {}

    asyncio.run(mw({"type": "websocket", "asgi": {"version": "3.0"}}, nothing, nothing))
    assert results[0].docroot == root and not is_held(root, results[0].id)


def test_a_call_deferred_in_a_sync_view_in_a_threadpool_is_held_until_the_response(
        make_docroot, jobs, monkeypatch):
    """Starlette runs sync endpoints in a threadpool: only the ContextVar finds the request."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    root = make_docroot(SLOT_TASKS)

    def view(request):  # a worker thread: no middleware on its stack
        result = jobs.add(2, 3)
        return JSONResponse({"id": result.id, "held": is_held(root, result.id)})

    assert serving.used()  # the jobs module has @delay functions: requests are followed
    mw = ReqCronASGI(Starlette(routes=[Route("/", view)]), root)
    try:
        sent = call(mw, http_scope())
        answer = json.loads(sent[1]["body"])
        assert answer["held"]
        assert Result(root, answer["id"]).wait(30).result == 5
    finally:
        mw.close()


def test_the_status_page_signs_in_answers_json_and_takes_a_posted_action(make_docroot, asgi):
    root = make_docroot(SLOT_TASKS)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app"})

    mw = asgi(app, root, status_path="/_reqcron", status_token=TOKEN)

    async def session() -> None:
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            assert (await c.get("/elsewhere")).text == "the app"
            refused = await c.get("/_reqcron/?format=json")
            assert refused.status_code == 401 and "Tick" not in refused.text
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            page = await c.get("/_reqcron/?format=json", headers=bearer)
            assert page.status_code == 200
            data = page.json()
            assert [t["name"] for t in data["tasks"]] == ["Tick"]
            wrong = await c.post("/_reqcron/login", data={"token": "nope"})
            assert wrong.status_code == 401
            login = await c.post("/_reqcron/login", data={"token": TOKEN})
            assert login.status_code == 303 and "reqcron_session" in c.cookies
            html = await c.get("/_reqcron/")
            assert html.status_code == 200 and "<b>Tick</b>" in html.text
            csrf = (await c.get("/_reqcron/?format=json")).json()["csrf"]
            form = {"csrf": csrf, "action": "disable", "task": "Tick"}
            other = await c.post("/_reqcron/action", data=form,
                                 headers={"Origin": "http://evil.example"})
            assert other.status_code == 403
            done = await c.post("/_reqcron/action?format=json", data=form)
            assert done.json() == {"ok": True, "action": "disable", "task": "Tick"}
            after = (await c.get("/_reqcron/?format=json", headers=bearer)).json()
            assert after["tasks"][0]["enabled"] is False

    asyncio.run(session())


# -- real servers ----------------------------------------------------------------------


# The head of the Starlette and FastAPI apps: a lifespan that leaves a mark per worker.
LIFESPAN = """
import os
from contextlib import asynccontextmanager
from pathlib import Path

from reqcron.asgi import ReqCronASGI

MARKS = Path({marks!r})


@asynccontextmanager
async def lifespan(app):
    (MARKS / f"startup-{{os.getpid()}}").touch()
    yield
    (MARKS / f"shutdown-{{os.getpid()}}").touch()
"""

STARLETTE = LIFESPAN + """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute


async def index(request):
    return PlainTextResponse(str(os.getpid()))


async def echo(websocket):
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


app = Starlette(routes=[Route("/", index), WebSocketRoute("/ws", echo)], lifespan=lifespan)
application = ReqCronASGI(app, {docroot!r}, status_path="/_reqcron", status_token="s3cret")
"""

FASTAPI = LIFESPAN + """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
def index():  # a sync endpoint: FastAPI runs it in a threadpool
    return str(os.getpid())


application = ReqCronASGI(app, {docroot!r}, status_path="/_reqcron", status_token="s3cret")
"""

DJANGO_SETTINGS = """
SECRET_KEY = "not secret: a test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djsite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
"""

DJANGO_URLS = """
import os, time

from django.http import HttpResponse, JsonResponse
from django.urls import path

import jobs
from reqcron.calls.result import engine_of as _engine

DOCROOT = {docroot!r}


def index(request):
    return HttpResponse(str(os.getpid()))


def defer(request):  # Django runs sync views in a thread, in a task of their own
    result = jobs.add(20, 22)
    due = _engine(DOCROOT).store.get_run(result.id).due
    return JsonResponse({{"id": result.id, "held": due > time.time() + 10}})


urlpatterns = [path("", index), path("defer", defer)]
"""

DJANGO_ASGI = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")

from django.core.asgi import get_asgi_application

from reqcron.asgi import ReqCronASGI

application = ReqCronASGI(get_asgi_application(), {docroot!r},
                          status_path="/_reqcron", status_token="s3cret")
"""


@pytest.fixture
def asgi_site(make_docroot, tmp_path):
    """A DOCROOT with the one-second Tick, and a folder for the app's marks."""
    marks = tmp_path / "marks"
    marks.mkdir()
    root = make_docroot(SLOT_TASKS)
    return root, marks


def write_app(tmp_path: Path, name: str, source: str, **values: Any) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source.format(**values)))


def status_page_answers(url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "_reqcron/?format=json", timeout=10)
    assert refused.value.code == 401 and b"Tick" not in refused.value.read()
    refused.value.close()
    asked = urllib.request.Request(url + "_reqcron/?format=json",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(asked, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        assert [t["name"] for t in json.loads(resp.read())["tasks"]] == ["Tick"]


def marks(folder: Path, kind: str) -> set[str]:
    return {p.name.split("-")[1] for p in folder.glob(f"{kind}-*")}


def uvicorn(serve: Any, module: str, workers: int) -> Any:
    """``uvicorn --workers N module:application`` on a free port, started by ``serve``."""
    return serve(str(BIN / "uvicorn"), "--workers", str(workers), "--host", "127.0.0.1",
                 "--port", "{port}", "--log-level", "warning", f"{module}:application")


def load_reaches_workers_and_runs_each_slot_once(server: Any, root: Path, clients: int
                                                 ) -> set[bytes]:
    """Four seconds of load from ``clients`` threads; return the bodies (worker pids) seen."""
    seconds = 4
    pids = server.load(seconds, clients=clients)
    assert len(pids) >= 2, "the load did not reach several workers"
    assert_each_slot_ran_once(root, seconds)
    return pids


def test_uvicorn_three_workers_with_starlette(asgi_site, serve, tmp_path):
    from websockets.sync.client import connect

    root, folder = asgi_site
    write_app(tmp_path, "app_starlette", STARLETTE, docroot=str(root), marks=str(folder))
    server = uvicorn(serve, "app_starlette", workers=3)
    pids = load_reaches_workers_and_runs_each_slot_once(server, root, clients=6)
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
        ws.send("over the socket")
        assert ws.recv(timeout=10) == "over the socket"
    status_page_answers(server.url)
    started = wait_for(lambda: len(marks(folder, "startup")) >= 3 and marks(folder, "startup"),
                       message="each worker's lifespan startup")
    assert {p.decode() for p in pids} <= started
    server.stop()
    assert marks(folder, "shutdown") == started


def test_gunicorn_with_uvicorn_workers_and_fastapi(asgi_site, serve, tmp_path):
    root, folder = asgi_site
    write_app(tmp_path, "app_fastapi", FASTAPI, docroot=str(root), marks=str(folder))
    server = serve(str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "--workers", "2",
                   "--bind", "127.0.0.1:{port}", "--graceful-timeout", "5",
                   "app_fastapi:application")
    pids = load_reaches_workers_and_runs_each_slot_once(server, root, clients=4)
    status_page_answers(server.url)
    assert {p.decode() for p in pids} <= marks(folder, "startup")
    server.stop()
    assert marks(folder, "shutdown") == marks(folder, "startup")


def test_uvicorn_workers_with_django_asgi(asgi_site, serve, tmp_path):
    root, _ = asgi_site
    (tmp_path / "djsite").mkdir()
    (tmp_path / "djsite" / "__init__.py").write_text("")
    (tmp_path / "djsite" / "settings.py").write_text(DJANGO_SETTINGS)
    write_app(tmp_path / "djsite", "urls", DJANGO_URLS, docroot=str(root))
    (tmp_path / "jobs.py").write_text(JOBS)
    write_app(tmp_path, "app_django", DJANGO_ASGI, docroot=str(root))
    server = uvicorn(serve, "app_django", workers=2)
    load_reaches_workers_and_runs_each_slot_once(server, root, clients=4)
    status_page_answers(server.url)
    with urllib.request.urlopen(server.url + "defer", timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["held"], "a call deferred in a Django view was not held for its response"
    assert Result(root, answer["id"]).wait(30).result == 42
