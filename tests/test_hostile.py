"""Hostile input: rows, folders, bodies and values that must not take the site with them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import hello, reqcron_cmd, request, runtask

from reqcron import Docroot
from reqcron.engine.stored_calls import Call, new_run
from reqcron.records import now

TASKS = """\
from reqcron import Task, delay

class Nap(Task):
    def run(self):
        print("napped")

@delay
def double(x):
    return 2 * x
"""

# A module that leaves a marker as soon as it is imported: code running as the server's user.
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")

def x():
    pass
"""


def drain(root: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the DOCROOT's queued calls in a real task process, as the middleware starts one."""
    return subprocess.run([sys.executable, "-P", "-m", "reqcron.runtask", "--calls", str(root)],
                          capture_output=True, text=True, timeout=timeout)


def queue_row(root: Path, target: str, path: list[str], *args: object) -> int:
    """Insert a queued call row as anyone who can write the state could."""
    call = Call(target, list(args), {}, path=path)
    with Docroot(root) as docroot:
        run_id = docroot.store.add_run(new_run(call, now(), now()))
    assert run_id is not None
    return run_id


def recorded(root: Path, run_id: int) -> tuple[str, str]:
    with Docroot(root) as docroot:
        run = docroot.get_run(run_id)
    assert run is not None
    return run.status, run.error or ""


# -- 1. a call row names its own import path ---------------------------------------------


def test_a_row_naming_a_world_writable_folder_never_imports_from_it(make_docroot, tmp_path):
    root = make_docroot(TASKS)
    evil = tmp_path / "drop"
    evil.mkdir()
    evil.chmod(0o777)
    marker = tmp_path / "marker"
    (evil / "evilmod.py").write_text(EVIL.format(marker=str(marker)))
    run_id = queue_row(root, "evilmod:x", [str(evil)])
    drain(root)
    assert not marker.exists(), "the row's module was imported"
    status, error = recorded(root, run_id)
    assert status == "failed" and error.startswith("refused: "), error
    assert "evilmod" in error


def test_a_module_not_marked_with_delay_is_refused_before_it_is_imported(make_docroot, tmp_path):
    root = make_docroot(TASKS)
    folder = tmp_path / "owned"  # a folder of the server's own user, not writable by others
    folder.mkdir(mode=0o755)
    marker = tmp_path / "marker"
    (folder / "script.py").write_text(EVIL.format(marker=str(marker)))
    run_id = queue_row(root, "script:x", [str(folder)])
    drain(root)
    assert not marker.exists(), "a module with no @delay function was imported"
    status, error = recorded(root, run_id)
    assert status == "failed" and error.startswith("refused: "), error
    assert "@delay" in error


def test_a_marked_function_beside_the_tasks_still_runs(make_docroot, tmp_path):
    root = make_docroot(TASKS)
    (tmp_path / "mailjobs.py").write_text(textwrap.dedent("""\
        from reqcron import delay

        @delay(retries=1)
        def triple(x):
            return 3 * x
    """))
    run_id = queue_row(root, "mailjobs:triple", [], 14)
    drain(root)
    with Docroot(root) as docroot:
        run = docroot.get_run(run_id)
    assert run is not None and run.status == "ok", run.error
    assert run.return_value == "42"


# -- 2. the DOCROOT's parent and the standard library's probes ---------------------------

PROBING_TASKS = """\
import copy, getpass, pickle, subprocess  # each looks for a module it does without
from reqcron import Task

class Nap(Task):
    def run(self):
        print("napped")
"""

# What another user leaves where the standard library looks: it must never run.
PLANT = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
raise SystemExit("planted")
"""


@pytest.fixture
def open_parent(tmp_path):
    """A folder every user can write, as /tmp or a shared upload folder is."""
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    return parent


def plant(folder: Path, marker: Path) -> None:
    (folder / "msvcrt.py").write_text(PLANT.format(marker=str(marker)))
    (folder / "org").mkdir()
    (folder / "org" / "__init__.py").write_text(PLANT.format(marker=str(marker)))


def test_a_world_writable_parent_puts_no_code_in_task_processes(open_parent, tmp_path):
    root = open_parent / "site"
    root.mkdir(mode=0o755)
    (root / "__tasks__.py").write_text(PROBING_TASKS)
    marker = tmp_path / "marker"
    plant(open_parent, marker)
    done = runtask(root, "Nap")
    assert not marker.exists(), "code from the open parent ran"
    assert done.returncode == 0, done.stderr
    assert "napped" in done.stdout
    checked = reqcron_cmd("check", str(root))
    assert not marker.exists() and checked.returncode == 0, checked.stdout + checked.stderr


def test_a_world_writable_parent_is_left_off_the_path_and_the_error_says_so(open_parent):
    root = open_parent / "site"
    root.mkdir(mode=0o755)
    (root / "__tasks__.py").write_text("import helpers\n" + PROBING_TASKS)
    (open_parent / "helpers.py").write_text("")
    checked = reqcron_cmd("check", str(root))
    assert checked.returncode != 0
    output = checked.stdout + checked.stderr
    assert "helpers" in output and "writable by every user" in output, output
    assert "internal error" not in output


def test_a_module_beside_the_tasks_never_answers_for_the_standard_library(make_docroot,
                                                                           tmp_path):
    root = make_docroot(PROBING_TASKS)
    marker = tmp_path / "marker"
    plant(root, marker)
    done = runtask(root, "Nap")
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr and "napped" in done.stdout
    assert not marker.exists()


def test_a_safe_parent_still_lends_its_modules_to_the_tasks(make_docroot, tmp_path):
    (tmp_path / "helpers.py").write_text("WORD = 'lent'\n")
    root = make_docroot("from helpers import WORD\n" + PROBING_TASKS.replace(
        'print("napped")', "print(WORD)"))
    done = runtask(root, "Nap")
    assert done.returncode == 0 and "lent" in done.stdout, done.stderr


# -- 3. the status page reads no body of any size ----------------------------------------

TOKEN = "s3cret-token-for-tests"
CAP = 8 * 1024  # what any form of the page may be, at most


class Tripwire(io.RawIOBase):
    """A request body of ``size`` bytes that fails the test when read past ``CAP``."""

    def __init__(self, size: int | None):
        self.size, self.taken = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        room = len(buffer) if self.size is None else min(len(buffer), self.size - self.taken)
        if self.taken + room > CAP + 1:
            raise AssertionError(f"read {self.taken + room} bytes of a form")
        buffer[:room] = b"a" * room
        self.taken += room
        return room


def post(app, path: str, body: Tripwire, length: int | None) -> str:
    extra = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/x-www-form-urlencoded",
             "wsgi.input": body}
    if length is None:
        extra["wsgi.input_terminated"] = True  # chunked: the server ends the stream
    else:
        extra["CONTENT_LENGTH"] = str(length)
    return request(app, path, **extra)[0]


@pytest.mark.parametrize("path", ["/_reqcron/login", "/_reqcron/action", "/_reqcron/logout"])
def test_a_huge_form_is_refused_unread(middleware, make_docroot, path):
    app = middleware(hello, str(make_docroot(TASKS)), status_path="/_reqcron",
                     status_token=TOKEN)
    body = Tripwire(300 << 20)
    assert post(app, path, body, 300 << 20).startswith("413")
    assert body.taken == 0


def test_a_form_with_no_length_is_read_only_to_the_cap(middleware, make_docroot):
    app = middleware(hello, str(make_docroot(TASKS)), status_path="/_reqcron",
                     status_token=TOKEN)
    body = Tripwire(None)  # endless
    assert post(app, "/_reqcron/login", body, None).startswith("413")
    assert body.taken <= CAP + 1


def test_a_login_form_within_the_cap_still_signs_in(middleware, make_docroot):
    app = middleware(hello, str(make_docroot(TASKS)), status_path="/_reqcron",
                     status_token=TOKEN)
    form = f"token={TOKEN}".encode()
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/x-www-form-urlencoded",
               "CONTENT_LENGTH": str(len(form)), "wsgi.input": io.BytesIO(form)}
    status, _ = request(app, "/_reqcron/login", **environ)
    assert status.startswith("303") or status.startswith("302"), status


# -- 4. one value stops one task, never all ----------------------------------------------

FAR_TASKS = """\
from datetime import datetime, timedelta, timezone
from reqcron import Task

class Late(Task):
    at = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))

    def run(self):
        print("late")

class Nap(Task):
    every = timedelta(seconds=30)

    def run(self):
        print("napped")
"""


def test_a_moment_past_what_a_datetime_holds_is_its_tasks_load_error(make_docroot):
    root = make_docroot(FAR_TASKS)
    checked = reqcron_cmd("check", str(root))
    output = checked.stdout + checked.stderr
    assert checked.returncode == 2, output  # check's exit code for files that do not load
    assert "internal error" not in output
    assert "'Late'" in output and "at 9999-12-31T23:00:00-05:00 is out of range" in output
    listed = reqcron_cmd("list", str(root), "--json")
    assert "internal error" not in listed.stderr
    tasks = {t["name"]: t for t in json.loads(listed.stdout)["tasks"]}
    assert tasks["Nap"]["next_run"] is not None, listed.stdout
    done = runtask(root, "Nap")
    assert done.returncode == 0 and "napped" in done.stdout, done.stderr


@pytest.mark.parametrize("attribute", ["at", "anchor"])
def test_a_far_moment_in_any_form_names_the_task_and_the_attribute(attribute):
    from reqcron import Task
    from reqcron.errors import ScheduleError

    far = datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))  # year 0 in UTC
    body = {"at": far} if attribute == "at" else {"every": 60, "anchor": far}
    cls = type("Early", (Task,), {"abstract": True, **body})
    with pytest.raises(ScheduleError, match=f"{attribute} 0001-01-01T01:00:00\\+05:00 is out"):
        cls().compiled_schedule()


def test_a_schedule_the_engine_cannot_compute_stops_only_its_task():
    from reqcron.engine.catalog_sync import row_changes
    from reqcron.loading.catalog import Catalog, TaskInfo
    from reqcron.schedule.forms import from_signature

    catalog = Catalog("UTC", {"Bad": TaskInfo("Bad", "bad", "?", "at"),
                              "Good": TaskInfo("Good", "every:60", "every minute", "every")})

    def schedule(signature, anchor):
        if signature == "bad":
            raise OverflowError("date value out of range")
        return from_signature(signature, datetime.fromtimestamp(anchor, UTC))

    syncs, removed = row_changes(catalog, {}, 1_800_000_000.0, schedule)
    assert [s.name for s in syncs] == ["Good"] and removed == []
    assert "OverflowError" in (catalog.tasks["Bad"].error or "")
    assert [e.task for e in catalog.errors] == ["Bad"]


# -- 5. a read that failed for a passing reason is tried again ---------------------------

FLAKY_TASKS = """\
import os
with open({reads!r}, "a") as fh:
    fh.write("read\\n")
if os.path.exists({down!r}):
    raise ConnectionError("the database is down")

from reqcron import Task

class Nap(Task):
    def run(self):
        print("napped")
"""


@pytest.fixture
def flaky(make_docroot, tmp_path):
    """A DOCROOT whose tasks do not import while the file ``down`` exists; ``reads`` counts."""
    reads, down = tmp_path / "reads", tmp_path / "down"
    down.write_text("")
    root = make_docroot(FLAKY_TASKS.format(reads=str(reads), down=str(down)))
    return root, reads, down


def count(reads: Path) -> int:
    return len(reads.read_text().splitlines()) if reads.exists() else 0


class Quick:
    """A back-off of half a second, so the test does not wait minutes."""

    def delay(self, attempt: int) -> float:
        return 0.5


def test_a_failed_read_is_tried_again_after_its_back_off(flaky, monkeypatch):
    from conftest import wait_for

    from reqcron.engine import catalog_sync

    monkeypatch.setattr(catalog_sync, "RETRY", Quick(), raising=False)
    root, reads, down = flaky
    with Docroot(root) as doc:
        assert "ConnectionError" in str(doc.load_errors())
        assert count(reads) == 1
        doc.pulse()  # within its back-off: not read again
        assert count(reads) == 1
        wait_for(lambda: doc.pulse() and count(reads) >= 2, timeout=10,
                 message="a second read")
        down.unlink()  # the dependency is back
        wait_for(lambda: not doc.load_errors(), timeout=10, message="a good read")
        assert "Nap" in doc.catalog().tasks
        settled = count(reads)
        doc.pulse()
        assert count(reads) == settled  # a good read is kept: no more reads


def test_reqcron_check_reads_a_failed_file_again_at_once(flaky):
    root, reads, down = flaky
    first = reqcron_cmd("check", str(root))
    assert first.returncode == 2 and "the database is down" in first.stderr
    down.unlink()
    second = reqcron_cmd("check", str(root))
    assert second.returncode == 0, second.stderr
    assert count(reads) == 2


def test_the_back_off_starts_at_5_seconds_and_doubles_to_5_minutes():
    from reqcron.engine.catalog_sync import Backoff

    assert [Backoff().delay(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert Backoff().delay(10_000) == 300


# -- 6. a task class that does nothing is an error, not a run recorded ok ----------------

RUNLESS_TASKS = """\
from reqcron import Task, every

class Base(Task):
    abstract = True

    def run(self):
        print("base ran")

class Typo(Task):
    cron = "* * * * *"

    def runn(self):
        print("never")

class Bare(Task):
    cron = "* * * * *"

class Inherits(Base):
    cron = "* * * * *"

@every(minutes=5)
def beat():
    print("beat")
"""


def test_a_task_class_with_a_misspelt_run_is_a_load_error_naming_it(make_docroot):
    root = make_docroot(RUNLESS_TASKS)
    checked = reqcron_cmd("check", str(root))
    assert checked.returncode == 2
    errors = [line for line in checked.stderr.splitlines()
              if line.startswith("reqcron: ") and not line.startswith("reqcron: warning:")]
    assert len(errors) == 1, checked.stderr
    assert "task class Typo defines runn() but no run()" in errors[0]
    with Docroot(root) as doc:
        # Bare (no run() at all) stays a schedule-only task, as the house's examples are.
        assert sorted(doc.catalog().tasks) == ["Bare", "Inherits", "beat"]
    done = runtask(root, "Inherits")
    assert done.returncode == 0 and "base ran" in done.stdout, done.stderr
    refused = runtask(root, "Typo")
    assert refused.returncode == 2 and "rename runn() to run()" in refused.stderr
