"""The catalog: what ``__tasks__.py`` declares, as data (JSON in the state and between processes).

It is made in a short-lived child (child.py) that imports the task files,
read by its parent (reader.py), and kept in the state, so each change is
read once per site and the web server's processes never import task code.
"""

from __future__ import annotations

from .. import alerts
from ..limits import ERROR_LIMIT, cap
from ..records import LoadError, Record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from ..task_base import TaskBase as Task


#: Changes whenever the catalog's shape does, so old stored catalogs are re-read.
FORMAT = "3"


class TaskInfo(Record):
    """One task as the engine and the surfaces see it, without its code."""

    __slots__ = ("name", "signature", "describe", "kind", "zone", "grace", "timeout",
                 "overlap", "enabled", "error", "notify", "ping", "source", "catch_up",
                 "between", "task_zone", "even_when_paused", "warn_after", "has_when")

    def __init__(self, name: str, signature: str, describe: str, kind: str,
                 zone: str | None = None, grace: float | None = None,
                 timeout: float | None = None, overlap: bool = False, enabled: bool = True,
                 error: str | None = None, notify: list[str] | None = None,
                 ping: str | None = None, source: str | None = None, catch_up: str = "one",
                 between: str | None = None, task_zone: str | None = None,
                 even_when_paused: bool = False, warn_after: float | None = None,
                 has_when: bool = False):
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
        self.catch_up = catch_up  # "one", "all" or "none" (task_base.CATCH_UP)
        self.between = between  # "HH:MM-HH:MM" in task_zone, or None
        self.task_zone = task_zone  # the zone the task's slots are read in
        self.even_when_paused = even_when_paused
        self.warn_after = warn_after
        self.has_when = has_when  # the task defines when()


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
        catch_up=task.catch_up,
        between=task.between,
        task_zone=task.timezone or zone_name,
        even_when_paused=bool(task.even_when_paused),
        warn_after=task.seconds("warn_after"),
        has_when=callable(getattr(task, "when", None)),
    )
