"""Hostile input: rows, folders, bodies and values that must not take the site with them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
