"""Task modules (``modules = [...]`` in reqcron.toml): read like __tasks__.py, in a child,
hot-reloaded by their files, each failing on its own, run by runtask from their module."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import drive, hello, reqcron_cmd, runtask, write

from reqcron import ConfigError, Docroot
from reqcron.loading.catalog import Catalog
from reqcron.loading.import_path import module_files

TASKS = """
    from reqcron import Task

    class Nightly(Task):
        cron = "0 1 * * *"
        def run(self):
            return "nightly"
"""

# Its package records each process that imports it: the web process must not.
PACKAGE_INIT = "import os\nwith open(os.environ['IMPORTS_LOG'], 'a') as f:\n" \
               "    f.write(f'{os.getpid()}\\n')\n"

JOBS = """
    from reqcron import Task, every

    class Reindex(Task):
        def run(self):
            return "reindexed from shop.jobs"

    @every(minutes=5)
    def heartbeat():
        return "beat"
"""


@pytest.fixture
def site(make_docroot, tmp_path, monkeypatch):
    """A DOCROOT with a package shop/ beside __tasks__.py and modules = ["shop.jobs"]."""
    monkeypatch.setenv("IMPORTS_LOG", str(tmp_path / "imports.log"))
    root = make_docroot(TASKS, '[reqcron]\nmodules = ["shop.jobs"]\n')
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text(PACKAGE_INIT)
    write(root / "shop" / "jobs.py", JOBS)
    return root


def stored(doc: Docroot) -> Catalog:
    """The catalog as the state holds it, without this process reading anything."""
    row = doc.store.catalog()
    return Catalog.from_json(row.data) if row.data else Catalog("UTC")


def importers(tmp_path: Path) -> set[int]:
    log = tmp_path / "imports.log"
    return {int(p) for p in log.read_text().split()} if log.exists() else set()


def test_module_tasks_are_registered_with_those_of_the_tasks_file(site, tmp_path, docroot):
    doc = docroot(site)
    tasks = doc.catalog().tasks
    assert sorted(tasks) == ["Nightly", "Reindex", "heartbeat"]
    assert tasks["Reindex"].source == "shop.jobs" and tasks["Nightly"].source is None
    assert tasks["heartbeat"].describe == "every 5 minutes"
    assert doc.load_errors() == []
    assert "shop" not in sys.modules and os.getpid() not in importers(tmp_path)
    assert importers(tmp_path), "the catalog child imported the module"


def test_runtask_runs_a_module_task_from_its_module(site, docroot):
    done = runtask(site, "Reindex")
    assert done.returncode == 0, done.stderr
    (run,) = docroot(site).history("Reindex")
    assert run.status == "ok" and run.return_value == '"reindexed from shop.jobs"'
    assert runtask(site, "heartbeat").returncode == 0


def test_a_change_to_a_module_is_picked_up_while_requests_come(site, middleware, tmp_path, docroot):
    app = middleware(hello, site)
    doc = docroot(site)
    drive(app, lambda: "Reindex" in stored(doc).tasks, message="the first catalog")
    write(site / "shop" / "jobs.py", JOBS.replace("class Reindex", "class Rebuild"))
    changed = time.monotonic()
    drive(app, lambda: "Rebuild" in stored(doc).tasks, message="the module's change")
    assert time.monotonic() - changed < 5  # a poll (1 s) and a read, on a busy machine
    assert "Reindex" not in stored(doc).tasks
    assert "shop" not in sys.modules and os.getpid() not in importers(tmp_path)


def test_an_edit_within_the_same_second_is_not_hidden_by_cached_bytecode(
        site, monkeypatch, docroot):
    # A .pyc is trusted when the source's whole-second mtime and size match.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    jobs = site / "shop" / "jobs.py"
    second = int(time.time()) * 1_000_000_000
    os.utime(jobs, ns=(second, second))
    doc = docroot(site)
    assert "Reindex" in doc.catalog().tasks
    jobs.write_text(jobs.read_text().replace("Reindex", "Rebuild"))  # the same size
    os.utime(jobs, ns=(second + 500_000_000, second + 500_000_000))
    assert "Rebuild" in doc.catalog().tasks
    done = runtask(site, "Rebuild")
    assert done.returncode == 0, done.stderr


def test_a_module_that_does_not_import_keeps_its_tasks_and_spares_the_others(site, docroot):
    doc = docroot(site)
    assert "Reindex" in doc.catalog().tasks
    write(site / "shop" / "jobs.py", "from reqcron import Task\n\nimport no_such_module_here\n")
    (error,) = doc.load_errors()
    assert (error.file, error.line) == (str(site / "shop" / "jobs.py"), 3)
    assert "'shop.jobs'" in error.message and "no_such_module_here" in error.message
    catalog = doc.catalog()
    assert sorted(catalog.tasks) == ["Nightly", "Reindex", "heartbeat"]  # nothing dropped
    assert catalog.error_of("Reindex") == str(error) and catalog.error_of("Nightly") is None

    listed = reqcron_cmd("list", str(site))
    assert listed.returncode == 2 and "shop/jobs.py:3" in listed.stdout
    assert "BROKEN: Reindex, heartbeat" in listed.stdout
    checked = reqcron_cmd("check", str(site))
    assert checked.returncode == 2
    assert "shop/jobs.py:3: task module 'shop.jobs' does not import" in checked.stderr
    assert runtask(site, "Nightly").returncode == 0  # the tasks file's tasks still run
    refused = runtask(site, "Reindex")
    assert refused.returncode == 2 and "shop/jobs.py:3" in refused.stderr

    write(site / "shop" / "jobs.py", JOBS)
    assert doc.load_errors() == [] and doc.catalog().error_of("Reindex") is None


def test_a_task_name_used_in_the_tasks_file_and_a_module_is_an_error_naming_both(site, docroot):
    write(site / "shop" / "jobs.py", JOBS.replace("class Reindex", "class Nightly"))
    doc = docroot(site)
    (error,) = doc.load_errors()
    assert error.task == "Nightly" and error.file == str(site / "shop" / "jobs.py")
    assert "Nightly (in __tasks__.py) and Nightly (in shop.jobs)" in error.message
    assert sorted(doc.catalog().tasks) == ["heartbeat"]


def test_a_missing_module_names_the_places_it_was_looked_for(site, docroot):
    (site / "reqcron.toml").write_text('[reqcron]\nmodules = ["shop.jobs", "shop.mail"]\n')
    doc = docroot(site)
    (error,) = doc.load_errors()
    assert error.file == str(site / "reqcron.toml") and "'shop.mail'" in error.message
    assert f"{site}, {site.parent}" in error.message
    assert "Reindex" in doc.catalog().tasks  # the other module loads
    # Creating it is noticed: its file in the DOCROOT is watched before it exists.
    write(site / "shop" / "mail.py", "from reqcron import Task\nclass Mail(Task):\n    pass\n")
    assert doc.load_errors() == [] and "Mail" in doc.catalog().tasks


def test_modules_are_found_in_the_docroots_parent_without_importing_them(make_docroot, tmp_path,
                                                                           monkeypatch, docroot):
    # A project with its public DOCROOT inside: /project/public, /project/shop/jobs.py.
    monkeypatch.setenv("IMPORTS_LOG", str(tmp_path / "imports.log"))
    root = make_docroot(TASKS, '[reqcron]\nmodules = ["shop.jobs"]\n', name="public")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text(PACKAGE_INIT)
    write(tmp_path / "shop" / "jobs.py", JOBS)
    assert module_files(root, ["shop.jobs"]) == [tmp_path / "shop" / "jobs.py"]
    assert importers(tmp_path) == set()
    assert "Reindex" in docroot(root).catalog().tasks
    done = runtask(root, "Reindex")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "toml, message",
    [
        ('modules = "shop.jobs"', 'modules must be an array of import names like "shop.jobs", '
                                  "not 'shop.jobs'"),
        ('modules = ["shop jobs"]', "modules must hold import names like \"shop.jobs\", "
                                    "not 'shop jobs'"),
        ('modules = [""]', "modules must hold import names"),
        ("modules = [3]", "not 3"),
        ('django_settings = "my-site.settings"', "django_settings must be an import name like "
                                                 "\"mysite.settings\", not 'my-site.settings'"),
        ("django_settings = 1", "django_settings must be a non-empty string"),
    ],
)
def test_bad_module_settings_give_one_clear_error(make_docroot, toml, message, docroot):
    root = make_docroot(TASKS, f"[reqcron]\n{toml}\n")
    with pytest.raises(ConfigError, match="reqcron.toml") as caught:
        docroot(root)
    assert message in str(caught.value)
