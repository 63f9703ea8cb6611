"""Flask and Django applications wrapped the way the README says, and driven."""

from __future__ import annotations

import pytest
from conftest import wait_for

from reqcron import Docroot, ReqCron

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


def test_flask(make_docroot):
    flask = pytest.importorskip("flask")
    root = make_docroot(TASKS)
    app = flask.Flask(__name__)

    @app.route("/")
    def index():
        return "hello from flask"

    app.wsgi_app = ReqCron(app.wsgi_app, root)
    client = app.test_client()

    def step():
        response = client.get("/")
        assert response.data == b"hello from flask"
        return ran(root)

    wait_for(step, timeout=15, message="a run driven by Flask requests")
    app.wsgi_app.close()


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


def test_django(make_docroot):
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

    application = ReqCron(get_wsgi_application(), root)  # what wsgi.py does

    def step():
        status, body = wsgi_get(application)
        assert status.startswith("200") and body == b"hello from django"
        return ran(root)

    wait_for(step, timeout=15, message="a run driven by Django requests")
    application.close()


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
