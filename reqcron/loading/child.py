"""``python -P -m reqcron.loading.child DOCROOT ZONE [--django SETTINGS] [MODULE ...]``.

The child half of reading a catalog (reader.py is the parent's): import
the task files here, describe each task, print the catalog as JSON on a
copy of stdout, and exit without running anything the files left behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import TASKS_FILE
from ..records import LoadError
from .catalog import Catalog, info_of
from .loader import load_tasks


def build(docroot: Path, zone_name: str, modules: Sequence[str] = (),
          django_settings: str | None = None) -> Catalog:
    """Import the tasks file (and ``modules``) in this process and describe them
    (the child's half)."""
    from ..schedule.zones import zone_named

    loaded = load_tasks(docroot, zone_named(zone_name), modules=modules,
                        django_settings=django_settings)
    catalog = Catalog(zone_name, errors=loaded.errors).capped()
    if not loaded.file_ok:
        catalog.file_error = "; ".join(str(e) for e in catalog.errors if e.task is None)
        return catalog.capped()
    for name, task in loaded.tasks.items():
        catalog.tasks[name] = info_of(task, zone_name, loaded.sources.get(name))
    return catalog


def main(argv: list[str] | None = None) -> int:
    """Print the catalog of DOCROOT as JSON (see the module's docstring)."""
    docroot, zone_name, *modules = argv if argv is not None else sys.argv[1:]
    django_settings = None
    if modules[:1] == ["--django"]:
        django_settings, modules = modules[1], modules[2:]
    where = str(Path(docroot) / TASKS_FILE)
    # The answer goes to a copy of stdout; whatever the tasks file prints
    # goes nowhere, so a flood at import never reaches the server's log.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    # A fork at import leaves two processes reading on: only this one answers,
    # and the answer is that the file forked.  The copy dies with this process
    # even if it left its process group, which the parent kills.
    forked_at: list[int | None] = []
    copy: list[bool] = []
    reader = os.getpid()

    def in_copy() -> None:
        copy.append(True)
        _die_with_parent()
        if os.getppid() != reader:  # the reader (or a copy's parent) is gone already
            os._exit(0)

    os.register_at_fork(after_in_parent=lambda: forked_at.append(_line_in(where)),
                        after_in_child=in_copy)
    try:
        catalog = build(Path(docroot), zone_name, modules, django_settings)
    except BaseException as exc:  # the loader reports; this is the last resort
        catalog = Catalog.failed(zone_name, LoadError(where, None, _describe(exc)))
    if copy:
        os._exit(0)
    if forked_at:
        catalog = Catalog.failed(zone_name, LoadError(
            where, forked_at[0], "it forked at import (os.fork(), multiprocessing or the like): "
            f"reading {TASKS_FILE} must start no processes, so it was not loaded"))
    out.write(catalog.capped().to_json())
    out.flush()
    os._exit(0)  # no atexit handlers or threads of the tasks file hold the exit


def _line_in(path: str) -> int | None:
    """The line of ``path`` the current call stack passes through, if any."""
    frame = sys._getframe(1)
    while frame.f_code.co_filename != path:
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return frame.f_lineno


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent ends (Linux; else nothing)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, 9, 0, 0, 0)  # SIGKILL
    except (OSError, AttributeError):
        pass


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    main()
