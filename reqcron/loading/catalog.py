"""The catalog: what ``__tasks__.py`` declares, as data, read in a short-lived child process.

The web server's processes never import ``__tasks__.py``: a file that
exits, loops, forks or floods at import must not harm them.  A child
(``python -P -m reqcron.loading.catalog DOCROOT ZONE``) imports it, turns each task
into a ``TaskInfo`` and prints the catalog as JSON; the parent gives it a
time limit, reads a capped answer and kills whatever it left behind.  The
result is kept in the state, so each change is read once per site.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import alerts
from ..config import TASKS_FILE
from ..limits import ERROR_LIMIT, cap
from ..records import LoadError, Record
from .loader import load_tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from ..task_base import TaskBase as Task


def _read_timeout(default: float = 10.0) -> float:
    """The read time limit: REQCRON_READ_TIMEOUT seconds (0.1 to 3600) if set, else 10."""
    try:
        value = float(os.environ.get("REQCRON_READ_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0.1 <= value <= 3600 else default  # also refuses nan and inf


#: Seconds a read of __tasks__.py may take before it is stopped (REQCRON_READ_TIMEOUT).
READ_TIMEOUT = _read_timeout()
#: Bytes of catalog a read may answer with (10,000 tasks take ~3 MB).
READ_LIMIT = 64 * 1024 * 1024
#: Changes whenever the catalog's shape does, so old stored catalogs are re-read.
FORMAT = "2"


class TaskInfo(Record):
    """One task as the engine and the surfaces see it, without its code."""

    __slots__ = ("name", "signature", "describe", "kind", "zone", "grace", "timeout",
                 "overlap", "enabled", "error", "notify", "ping", "source")

    def __init__(self, name: str, signature: str, describe: str, kind: str,
                 zone: str | None = None, grace: float | None = None,
                 timeout: float | None = None, overlap: bool = False, enabled: bool = True,
                 error: str | None = None, notify: list[str] | None = None,
                 ping: str | None = None, source: str | None = None):
        self.name = name
        self.signature = signature  # the schedule, rebuilt by schedule.from_signature
        self.describe = describe
        self.kind = kind
        self.zone = zone  # the zone of a cron schedule
        self.grace = grace
        self.timeout = timeout
        self.overlap = overlap
        self.enabled = enabled  # the initial state
        #: Set when the task no longer loads: it keeps this, its last good
        #: definition, and its slots are recorded as failed with the error.
        self.error = error
        self.notify = notify or []  # the task's own notify targets (settings add more)
        self.ping = ping
        self.source = source  # the module of ``modules`` it is in; None: __tasks__.py


class Catalog(Record):
    """The tasks of a DOCROOT and the problems found reading them."""

    __slots__ = ("zone", "tasks", "errors", "file_error")

    def __init__(self, zone: str, tasks: dict[str, TaskInfo] | None = None,
                 errors: list[LoadError] | None = None, file_error: str | None = None):
        self.zone = zone
        self.tasks: dict[str, TaskInfo] = tasks or {}
        self.errors: list[LoadError] = errors or []
        #: Set when the file as a whole does not load: every task keeps its
        #: last good definition and its slots are recorded as failed.
        self.file_error = file_error

    @classmethod
    def failed(cls, zone: str, error: LoadError) -> Catalog:
        return cls(zone, errors=[error], file_error=str(error))

    def error_of(self, name: str) -> str | None:
        """Why ``name``'s slots cannot run now, or None."""
        info = self.tasks.get(name)
        return (info.error if info else None) or self.file_error

    def merged_over(self, previous: Catalog | None) -> Catalog:
        """Keep the last good definition of every task that fails to load now:
        all of them when the file fails, a module's when that module fails."""
        if previous is None:
            return self
        kept = dict(previous.tasks) if self.file_error else {}
        if not self.file_error:
            kept.update(self.tasks)
            broken = self.broken_modules()
            for name, info in previous.tasks.items():
                if name not in self.tasks and (
                        info.source in broken or any(e.task == name for e in self.errors)):
                    kept[name] = info
        merged = {}
        for name, info in kept.items():
            problem = None if name in self.tasks else self._problem(info)
            merged[name] = TaskInfo(**{**_fields(info), "error": problem})
        return Catalog(self.zone, merged, self.errors, self.file_error)

    def broken_modules(self) -> set[str]:
        """The modules of ``modules`` that do not import now."""
        return {e.module for e in self.errors if e.module and e.task is None}

    def _problem(self, info: TaskInfo) -> str | None:
        return next((str(e) for e in self.errors
                     if e.task == info.name or (e.module and e.module == info.source
                                                and e.task is None)), self.file_error)

    def to_json(self) -> str:
        import json  # not on a task process's way to run()

        return json.dumps({
            "zone": self.zone,
            "tasks": [_fields(info) for info in self.tasks.values()],
            "errors": [_fields(e) for e in self.errors],
            "file_error": self.file_error,
        })

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        import json

        data = json.loads(text)
        tasks = {t["name"]: TaskInfo(**t) for t in data["tasks"]}
        errors = [LoadError(**e) for e in data["errors"]]
        return cls(data["zone"], tasks, errors, data["file_error"]).capped()

    def capped(self) -> Catalog:
        """Cut every error message to ERROR_LIMIT: an exception raised at import
        with a 100 MB message must not flood the state, the log or a terminal."""
        for error in self.errors:
            error.message = cap(str(error.message), ERROR_LIMIT)
        if self.file_error is not None:
            self.file_error = cap(self.file_error, ERROR_LIMIT)
        for info in self.tasks.values():
            if info.error is not None:
                info.error = cap(info.error, ERROR_LIMIT)
        return self


def _fields(record: Record) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def info_of(task: Task, zone_name: str, source: str | None = None) -> TaskInfo:
    """Describe a loaded task; its schedule was compiled (and validated) by the loader."""
    schedule = task.compiled_schedule()
    zone = getattr(schedule, "zone", None)
    return TaskInfo(
        name=task.name,
        signature=schedule.signature,
        describe=schedule.describe(),
        kind=schedule.kind,
        zone=str(zone) if zone is not None else None,
        grace=task.seconds("grace"),
        timeout=task.seconds("timeout"),
        overlap=bool(task.overlap),
        enabled=bool(type(task).enabled),
        notify=alerts.targets(task.notify),
        ping=task.ping,
        source=source,
    )


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


def read(docroot: Path, python: str, zone_name: str, timeout: float = READ_TIMEOUT,
         modules: Sequence[str] = (), django_settings: str | None = None) -> Catalog:
    """Read the catalog of ``docroot`` in a child process (the parent's half); never raises.

    ``modules`` and ``django_settings`` come from the parent's settings (the
    last good ones), so a broken reqcron.toml does not break the tasks.
    """
    import select
    import signal
    import subprocess
    import time

    where = str(docroot / TASKS_FILE)

    def failure(message: str) -> Catalog:
        return Catalog.failed(zone_name, LoadError(where, None, message))

    command = [python, "-P", "-m", "reqcron.loading.catalog", str(docroot), zone_name,
               *(["--django", django_settings] if django_settings else []), *modules]
    try:
        child = subprocess.Popen(
            command, cwd=docroot, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        return failure(f"cannot start {python} to read it: {exc}")
    assert child.stdout is not None
    fd = child.stdout.fileno()
    answer = bytearray()
    deadline = time.monotonic() + timeout
    timed_out = too_big = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            exited = child.poll() is not None
            # Once the child is gone, stop at the first pause: a copy of it
            # forked at import may hold the pipe open for good.
            if not select.select([fd], [], [], 0.05 if exited else min(left, 0.5))[0]:
                if exited:
                    break
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            answer += chunk
            if len(answer) > READ_LIMIT:
                too_big = True
                break
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # it, and whatever it left behind
        except (ProcessLookupError, PermissionError):
            pass
        child.stdout.close()
        code = child.wait()
    if timed_out:
        return failure(f"reading it took longer than {timeout:g} s (an endless loop at "
                       "import?); it was stopped")
    if too_big:
        return failure(f"reading it answered more than {READ_LIMIT} bytes")
    try:
        return Catalog.from_json(answer.decode("utf-8"))
    except (ValueError, KeyError, TypeError):
        how = (f"died of {signal.Signals(-code).name}" if code < 0
               else f"exited with code {code}")
        return failure(f"reading it failed: its process {how} before it finished "
                       "(os._exit, a crash or a signal at import?)")


def main(argv: list[str] | None = None) -> int:
    """``python -P -m reqcron.loading.catalog DOCROOT ZONE [--django SETTINGS] [MODULE ...]``:
    print the catalog as JSON."""
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
