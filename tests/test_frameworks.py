"""Flask and Django applications wrapped the way the README says, and driven."""

from __future__ import annotations

import pytest
from conftest import wait_for

from reqcron import Docroot

TASKS = (
    "from reqcron import Task\nclass Tick(Task):\n    every = 1\n    def run(self):\n"
    "        return 'ran'\n"
)


def ran(root):
    doc = Docroot(root)
    try:
        return [r for r in doc.store.runs("Tick") if r.status == "ok"]
    finally:
        doc.close()


def test_flask(make_docroot, middleware):
    flask = pytest.importorskip("flask")
    root = make_docroot(TASKS)
    app = flask.Flask(__name__)

    @app.route("/")
    def index():
        return "hello from flask"

    app.wsgi_app = middleware(app.wsgi_app, root)
    client = app.test_client()

    def step():
        response = client.get("/")
        assert response.data == b"hello from flask"
        return ran(root)

    wait_for(step, timeout=15, message="a run driven by Flask requests")


def wsgi_get(app, path="/"):
    """Call a WSGI app with a plain environ, as a server would."""
    import io

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status = []
    body = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        return status[0], b"".join(body)
    finally:
        body.close()


def test_django(make_docroot, middleware):
    django = pytest.importorskip("django")
    from django.conf import settings

    root = make_docroot(TASKS)
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
        )
    django.setup()
    from django.core.wsgi import get_wsgi_application

    application = middleware(get_wsgi_application(), root)  # what wsgi.py does

    def step():
        status, body = wsgi_get(application)
        assert status.startswith("200") and body == b"hello from django"
        return ran(root)

    wait_for(step, timeout=15, message="a run driven by Django requests")


def hello_view(request):
    from django.http import HttpResponse

    return HttpResponse("hello from django")


def _urls():
    try:
        from django.urls import path
    except ImportError:  # pragma: no cover - django not installed
        return []
    return [path("", hello_view)]


urlpatterns = _urls()


def test_flask_deferred_call_as_in_the_readme(make_docroot, tmp_path, monkeypatch, middleware):
    """README, "Deferred calls": a receipt sent after the response, its status on a later page."""
    flask = pytest.importorskip("flask")
    import importlib

    from reqcron import Result

    root = make_docroot(TASKS)
    (tmp_path / "shopmail.py").write_text(
        "from reqcron import delay\n\n"
        "@delay(retries=3, timeout=60)\n"
        "def send_receipt(order_id: int, to: str) -> str:\n"
        "    return 'sent'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    send_receipt = importlib.import_module("shopmail").send_receipt
    app = flask.Flask(__name__)

    @app.post("/orders/<int:order_id>/receipt")
    def receipt(order_id):
        result = send_receipt(order_id, "customer@example.org")
        return {"call": result.id}, 202

    @app.get("/calls/<int:call_id>")
    def call_status(call_id):
        try:
            result = Result.get(str(root), call_id)
        except LookupError:
            return {"error": "no such call"}, 404
        if not result.is_ready():
            return {"status": result.status}
        return {"status": result.status, "error": result.error_message, "value": result.result}

    app.wsgi_app = middleware(app.wsgi_app, str(root))
    client = app.test_client()
    posted = client.post("/orders/7/receipt")
    assert posted.status_code == 202
    call = posted.get_json()["call"]
    posted.close()  # what every WSGI server does once the response is sent
    shown = wait_for(lambda: (r := client.get(f"/calls/{call}").get_json())["status"] == "ok"
                     and r, timeout=30, message="the receipt call to run")
    assert shown == {"status": "ok", "error": None, "value": "sent"}
    assert client.get("/calls/999").status_code == 404
