"""reqcron.contrib.django in a project made by ``django-admin startproject``, as the README says.

The project is made for real (startproject, startapp, the README's lines
added, makemigrations, migrate on SQLite) and served by gunicorn with two
workers: an app's cron.py runs once per slot through the ORM, a @task's
.enqueue() from a view runs after the response and after its transaction
commits (a rollback runs nothing), its result reads back, and the status
page is for staff only.  On Django 6 ``django.tasks`` is used; before it,
the ``django-tasks`` backport.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for
from realserver import BIN

django = pytest.importorskip("django")
TASKS = "django.tasks" if django.VERSION >= (6,) else "django_tasks"
if TASKS == "django_tasks":
    pytest.importorskip("django_tasks")

# The README's lines, as it gives them (TASKS_PACKAGE: django.tasks, or the backport).
SETTINGS = """
INSTALLED_APPS += ["shop", "reqcron.contrib.django"]
TASKS = {"default": {"BACKEND": "reqcron.contrib.django.ReqCronBackend"}}
"""
WSGI = """
from django.conf import settings
from reqcron import ReqCron
application = ReqCron(application, settings.BASE_DIR)
"""
URLS = """
from django.urls import include
urlpatterns += [path("reqcron/", include("reqcron.contrib.django.urls"))]
"""
TOML = """
[reqcron]
django_settings = "mysite.settings"
"""
MODELS = """
from django.db import models

class Order(models.Model):
    paid = models.BooleanField(default=False)
    receipt_sent = models.FloatField(null=True)
"""
CRON = """
import os
from reqcron import every
from shop.models import Order

@every(seconds=1)
def tick():
    return Order.objects.create(paid=False).pk
"""
TASK_FILE = """
import time
from {tasks} import task
from shop.models import Order

@task
def send_receipt(order_id):
    order = Order.objects.get(pk=order_id)  # committed before the task runs
    order.receipt_sent = time.time()
    order.save()
    return {{"order": order_id, "paid": order.paid}}
"""
# The test's own views: the README's buy(), a rollback, and a result read back.
VIEWS = """
import time
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from shop.models import Order
from shop.tasks import send_receipt

def ok(request):
    return HttpResponse("ok")

def buy(request):
    with transaction.atomic():
        order = Order.objects.create(paid=True)
        result = send_receipt.enqueue(order.pk)
        time.sleep(0.3)  # the task must wait for the commit, and for the response
    Order.objects.filter(pk=order.pk).update(receipt_sent=-time.time())  # just before it
    return HttpResponse(result.id)

def rolled_back(request):
    try:
        with transaction.atomic():
            order = Order.objects.create(paid=True)
            result = send_receipt.enqueue(order.pk)
            raise ValueError("no")
    except ValueError:
        return HttpResponse(result.id)

def result(request, id):
    found = send_receipt.get_result(id)
    return JsonResponse({"status": str(found.status), "errors": [e.traceback for e in found.errors],
                         "value": found.return_value if found.is_finished and not found.errors
                         else None, "attempts": found.attempts})
"""
TEST_URLS = """
from shop import views
urlpatterns += [path("accounts/", include("django.contrib.auth.urls")), path("", views.ok),
                path("buy", views.buy), path("rollback", views.rolled_back),
                path("result/<str:id>", views.result)]
"""


def manage(root: Path, *args: str, timeout: float = 60,
           **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=root, capture_output=True,
                          text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + textwrap.dedent(text))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """startproject mysite; startapp shop; the README's lines; migrated; two users."""
    done = subprocess.run([sys.executable, "-m", "django", "startproject", "mysite"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "mysite"
    assert manage(root, "startapp", "shop").returncode == 0
    append(root / "mysite" / "settings.py", SETTINGS)
    append(root / "mysite" / "wsgi.py", WSGI)
    append(root / "mysite" / "urls.py", URLS + TEST_URLS)
    (root / "reqcron.toml").write_text(textwrap.dedent(TOML).lstrip())
    (root / "shop" / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "shop" / "cron.py").write_text(textwrap.dedent(CRON))
    (root / "shop" / "tasks.py").write_text(textwrap.dedent(TASK_FILE.format(tasks=TASKS)))
    (root / "shop" / "views.py").write_text(textwrap.dedent(VIEWS))
    templates = root / "shop" / "templates" / "registration"
    templates.mkdir(parents=True)
    (templates / "login.html").write_text(  # for users who are not staff
        '<form method="post">{% csrf_token %}{{ form }}</form>')
    for command in (["makemigrations", "shop"], ["migrate"]):
        done = manage(root, *command)
        assert done.returncode == 0, done.stderr
    users = ("from django.contrib.auth.models import User; "
             "User.objects.create_user('staff', password='pw', is_staff=True); "
             "User.objects.create_user('plain', password='pw')")
    done = manage(root, "shell", "-c", users)
    assert done.returncode == 0, done.stderr
    return root


def orders(root: Path, where: str = "1") -> list[tuple[int, bool, float | None]]:
    conn = sqlite3.connect(root / "db.sqlite3", timeout=20)
    try:
        return conn.execute(f"SELECT id, paid, receipt_sent FROM shop_order WHERE {where}"
                            ).fetchall()
    finally:
        conn.close()


def test_manage_py_reqcron_runs_every_command_for_the_project(project: Path) -> None:
    assert manage(project, "check").returncode == 0
    listed = manage(project, "reqcron", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["tasks"]] == ["tick"]
    assert manage(project, "reqcron", "check").returncode == 0
    ran = manage(project, "reqcron", "run", "tick")  # the task writes through the ORM
    assert ran.returncode == 0, ran.stderr
    assert len(orders(project)) == 1
    history = manage(project, "reqcron", "history")
    assert history.returncode == 0 and "tick" in history.stdout
    assert manage(project, "reqcron", "run", "nosuch").returncode == 2
    assert manage(project, "reqcron", "explain").returncode == 2  # a usage error, as reqcron's

    # A second app with a broken cron.py: a load error naming its file; the others run on.
    assert manage(project, "startapp", "blog").returncode == 0
    append(project / "mysite" / "settings.py", 'INSTALLED_APPS += ["blog"]\n')
    (project / "blog" / "cron.py").write_text("import nosuch_module\n")
    checked = manage(project, "reqcron", "check")
    assert checked.returncode == 2
    assert str(project / "blog" / "cron.py") in checked.stdout + checked.stderr
    listed = manage(project, "reqcron", "list", "--json")
    assert [t["name"] for t in json.loads(listed.stdout)["tasks"]] == ["tick"]
    assert manage(project, "reqcron", "run", "tick").returncode == 0


def test_the_system_check_says_what_reqcron_toml_lacks(project: Path) -> None:
    (project / "reqcron.toml").write_text("[reqcron]\n")
    checked = manage(project, "check")
    assert checked.returncode != 0
    assert 'django_settings = "mysite.settings"' in checked.stderr


class Browser:
    """A client with a cookie jar that does not follow redirects."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class Stay(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), Stay())

    def open(self, path: str,
             data: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base + path, data=body,
                                         headers={"Referer": self.base + path})
        try:
            with self.opener.open(request, timeout=10) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode(), dict(exc.headers)

    def csrf(self, page: str) -> str:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert found, page[:500]
        return found.group(1)

    def login(self, user: str, at: str = "/admin/login/") -> None:
        status, page, _ = self.open(at)
        assert status == 200
        status, _, headers = self.open(at, {
            "username": user, "password": "pw", "csrfmiddlewaretoken": self.csrf(page),
            "next": "/reqcron/"})
        assert status == 302, status


def test_under_gunicorn_cron_enqueue_rollback_and_the_page(project: Path, serve) -> None:
    server = serve(str(BIN / "gunicorn"), "--workers", "2", "--bind", "127.0.0.1:{port}",
                   "--graceful-timeout", "5", "--chdir", str(project), "mysite.wsgi:application",
                   cwd=project)
    web = Browser(server.url.rstrip("/"))

    def get(path: str) -> str:
        status, body, _ = web.open(path)
        assert status == 200, (status, body[:300])
        return body

    # cron.py: once per slot, through the ORM.
    wait_for(lambda: get("/admin/login/") and len(orders(project, "NOT paid")) >= 3,
             timeout=30, interval=0.1, message="three ticks")
    listed = manage(project, "reqcron", "history", "tick", "--json")
    runs = [r for r in json.loads(listed.stdout) if r["status"] not in ("pending", "running")]
    assert runs and all(r["status"] == "ok" for r in runs), runs
    slots = [r["slot"] for r in runs]
    assert len(slots) == len(set(slots)), "a slot ran twice"

    # .enqueue() in a transaction: runs once, after the commit and after the response.
    call_id = get("/buy")
    result = wait_for(lambda: (r := json.loads(get(f"/result/{call_id}")))["status"]
                      == "SUCCESSFUL" and r, timeout=20, interval=0.1, message="the task")
    [(order, paid, sent)] = orders(project, "paid")
    assert result["value"] == {"order": order, "paid": True} and result["attempts"] == 1
    assert sent is not None and sent > 0, "the task ran before the response was done"

    # A rollback: never runs; its result says so.
    rolled = get("/rollback")
    rolled_back = wait_for(lambda: (r := json.loads(get(f"/result/{rolled}")))["status"]
                           == "FAILED" and r, timeout=10, interval=0.1, message="the rollback")
    assert "rolled back" in rolled_back["errors"][0]
    assert len(orders(project, "paid")) == 1

    # The status page: anonymous users to the login, others refused, staff served.
    status, _, headers = web.open("/reqcron/")
    assert status == 302 and headers["Location"].startswith("/admin/login/")
    web.login("plain", at="/accounts/login/")
    assert web.open("/reqcron/")[0] == 403
    staff = Browser(web.base)
    staff.login("staff")
    status, page, headers = staff.open("/reqcron/")
    assert status == 200 and "tick" in page and "send_receipt" in page
    assert headers["X-Frame-Options"] == "DENY"
    # Each run's own page, linked from the history, through Django too.
    run_id = re.search(r'<tr><td><a href="/reqcron/\?run=(\d+)">', page).group(1)
    status, shown, _ = staff.open(f"/reqcron/?run={run_id}")
    assert status == 200 and f"Run {run_id}" in shown
    assert staff.open("/reqcron/?run=999999")[0] == 404
    assert staff.open("/reqcron/action", {"action": "disable", "task": "tick"})[0] == 403  # CSRF
    status, _, _ = staff.open("/reqcron/action", {"action": "disable", "task": "tick",
                                                  "csrfmiddlewaretoken": staff.csrf(page)})
    assert status == 302
    listed = manage(project, "reqcron", "list", "--json")
    assert json.loads(listed.stdout)["tasks"][0]["enabled"] is False

    # A state that cannot be used: 503 and why, in one line, as the token-guarded page.
    (project / "reqcron.toml").write_text(
        TOML + 'state = "postgresql://root@127.0.0.1:1/nothing"\nsite = "shop"\n')
    status, body, _ = staff.open("/reqcron/")
    assert status == 503 and "cannot be used" in body and len(body.strip().splitlines()) == 1


ASGI = """
from django.conf import settings
from reqcron.asgi import ReqCronASGI
application = ReqCronASGI(application, settings.BASE_DIR)
"""
LATER_VIEW = """

async def later(request):
    from datetime import timedelta
    from django.utils import timezone
    when = timezone.now() + timedelta(seconds=1.5)
    order = await Order.objects.acreate(paid=True)
    result = await send_receipt.using(run_after=when).aenqueue(order.pk)
    return HttpResponse(f"{result.id} {when.timestamp()}")
"""


def test_under_uvicorn_aenqueue_with_run_after_and_cron(project: Path, serve) -> None:
    append(project / "mysite" / "asgi.py", ASGI)
    append(project / "shop" / "views.py", LATER_VIEW)
    append(project / "mysite" / "urls.py", 'urlpatterns += [path("later", views.later)]\n')
    server = serve(str(BIN / "uvicorn"), "--workers", "2", "--port", "{port}",
                   "mysite.asgi:application", cwd=project)
    web = Browser(server.url.rstrip("/"))

    def get(path: str) -> str:
        status, body, _ = web.open(path)
        assert status == 200, (status, body[:300])
        return body

    wait_for(lambda: get("/") and len(orders(project, "NOT paid")) >= 2, timeout=30,
             interval=0.1, message="two ticks")
    call_id, when = get("/later").split()
    first = json.loads(get(f"/result/{call_id}"))
    assert first["status"] == "READY"  # not before run_after
    result = wait_for(lambda: (r := json.loads(get(f"/result/{call_id}")))["status"]
                      == "SUCCESSFUL" and r, timeout=20, interval=0.1, message="the task")
    [(order, _, sent)] = orders(project, "paid")
    assert result["value"] == {"order": order, "paid": True}
    assert sent >= float(when)


def test_the_backend_is_truthful_about_what_it_supports(project: Path) -> None:
    script = f"""
from {TASKS}.base import DEFAULT_TASK_PRIORITY
from {TASKS} import task_backends
backend = task_backends["default"]
print("R:", backend.supports_defer, backend.supports_get_result, backend.supports_async_task,
      backend.supports_priority)
from shop.tasks import send_receipt
try:
    send_receipt.using(priority=5)
except Exception as exc:
    print("R:", type(exc).__name__)
try:
    send_receipt.get_result("12345")
except Exception as exc:
    print("R:", type(exc).__name__)
"""
    done = manage(project, "shell", "-c", script)
    assert done.returncode == 0, done.stderr
    said = [w for line in done.stdout.splitlines() if line.startswith("R:")
            for w in line.split()[1:]]
    assert said == ["True", "True", "True", "False",
                                   "InvalidTask" if TASKS == "django.tasks"
                                   else "InvalidTaskError", "TaskResultDoesNotExist"]
