"""django_settings: task processes set Django up first, so tasks use the ORM.

A real Django project written here (SQLite file, one app, one model,
migrated with manage.py), served by gunicorn with two workers.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from conftest import reqcron_cmd, runtask, wait_for
from realserver import BIN

pytest.importorskip("django")

FILES = {
    "manage.py": """
        import os, sys
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
        from django.core.management import execute_from_command_line
        execute_from_command_line(sys.argv)
    """,
    "mysite/__init__.py": "",
    "mysite/settings.py": """
        SECRET_KEY = "test"
        DEBUG = False
        ALLOWED_HOSTS = ["*"]
        INSTALLED_APPS = ["shop"]
        MIDDLEWARE = []
        ROOT_URLCONF = "mysite.urls"
        DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r},
                                  "OPTIONS": {{"timeout": 20}}}}}}
        USE_TZ = True
    """,
    "mysite/urls.py": """
        import sys
        from django.http import HttpResponse
        from django.urls import path
        from shop.mail import note

        def index(request):
            # The web process must never import the task module.
            return HttpResponse(f"jobs imported: {{'shop.jobs' in sys.modules}}")

        def defer(request):
            return HttpResponse(str(note("deferred").id))

        urlpatterns = [path("", index), path("defer", defer)]
    """,
    "mysite/wsgi.py": """
        import os
        from django.core.wsgi import get_wsgi_application
        from reqcron import ReqCron

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
        application = ReqCron(get_wsgi_application(), {docroot!r})
    """,
    "shop/__init__.py": "",
    "shop/models.py": """
        from django.db import models

        class Row(models.Model):
            source = models.CharField(max_length=40)
            pid = models.IntegerField()
    """,
    "shop/jobs.py": """
        import os
        from reqcron import Task
        from shop.models import Row

        class Tick(Task):
            every = 1
            def run(self):
                return Row.objects.create(source="tick", pid=os.getpid()).pk
    """,
    "shop/mail.py": """
        import os
        from reqcron import delay

        @delay
        def note(source):
            from shop.models import Row
            return Row.objects.create(source=source, pid=os.getpid()).pk
    """,
    # The tasks file imports a model at its top: Django is set up before it runs.
    "__tasks__.py": """
        import os
        from reqcron import Task
        from shop.models import Row

        class Record(Task):
            def run(self):
                return Row.objects.create(source="runtask", pid=os.getpid()).pk
    """,
    "reqcron.toml": """
        [reqcron]
        modules = ["shop.jobs"]
        django_settings = "mysite.settings"
    """,
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The Django project, which is the DOCROOT too, migrated."""
    root = tmp_path / "project"
    db = tmp_path / "data" / "db.sqlite3"
    db.parent.mkdir()
    for name, source in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source.format(db=str(db), docroot=str(root))
                                        if "{" in source else source).lstrip())
    import subprocess

    done = subprocess.run([sys.executable, "manage.py", "migrate", "--run-syncdb"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return root


def rows(project: Path, source: str) -> list[int]:
    db = project.parent / "data" / "db.sqlite3"
    with sqlite3.connect(db, timeout=20) as conn:
        found = conn.execute("SELECT pid FROM shop_row WHERE source = ?", (source,)).fetchall()
    conn.close()
    return [pid for (pid,) in found]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        body: str = resp.read().decode()
        return body


def test_runtask_sets_django_up_and_the_task_writes_through_the_orm(project):
    done = runtask(project, "Record")
    assert done.returncode == 0, done.stderr
    assert len(rows(project, "runtask")) == 1
    done = runtask(project, "Tick")  # a task of a module, which imports a model
    assert done.returncode == 0, done.stderr
    assert len(rows(project, "tick")) == 1
    checked = reqcron_cmd("check", str(project))
    assert checked.returncode == 0, checked.stderr


def test_gunicorn_runs_orm_tasks_and_a_broken_settings_module_fails_runs_not_the_site(
        project, serve, docroot):
    server = serve(str(BIN / "gunicorn"), "--workers", "2", "--bind", "127.0.0.1:{port}",
                   "--graceful-timeout", "5", "--chdir", str(project), "mysite.wsgi:application")
    doc = docroot(project)
    try:
        def ticked() -> bool:
            assert get(server.url) == "jobs imported: False"
            return len(rows(project, "tick")) >= 2

        wait_for(ticked, timeout=30, interval=0.1, message="ORM rows written by Tick")
        call_id = int(get(server.url + "defer"))  # a deferred call's process sets Django up too
        wait_for(lambda: get(server.url) and rows(project, "deferred"), timeout=20, interval=0.1,
                 message="the deferred call's row")
        # Its end is recorded once the function has returned: a moment after its row.
        run = wait_for(lambda: (r := doc.get_run(call_id)) is not None and r.status not in (
            "queued", "running") and r, timeout=20, message="the deferred call's end")
        assert run.status == "ok", run
        assert all(r.status == "ok" for r in doc.store.runs("Tick", 100)
                   if r.status not in ("pending", "running"))

        (project / "reqcron.toml").write_text(
            '[reqcron]\nmodules = ["shop.jobs"]\ndjango_settings = "mysite.nosuch"\n')

        def failed() -> list[str]:
            assert get(server.url) == "jobs imported: False"  # the site keeps serving
            return [r.error or "" for r in doc.store.runs("Tick", 20) if r.status == "failed"]

        errors = wait_for(failed, timeout=30, interval=0.1, message="a failed run of Tick")
        assert "mysite.nosuch" in errors[0], errors
        checked = reqcron_cmd("check", str(project))
        assert checked.returncode == 2 and "mysite.nosuch" in checked.stderr
        refused = runtask(project, "Record")
        assert refused.returncode == 2 and "django_settings 'mysite.nosuch'" in refused.stderr
    finally:
        server.stop()
        doc.close()
