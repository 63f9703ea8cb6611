"""TaskBase: everything a Task is but ``delay``: its schedule, attributes and run context.

The loader, the engine and the task process know tasks by this class; ``Task``
(task.py) adds ``delay``, which reaches up into the deferred calls.

Kept light on purpose: a task process imports it first, and the schedule
machinery (croniter) is only imported when a schedule is compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import MappingProxyType

from .errors import ScheduleError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import logging
    from typing import Any, ClassVar

    from .schedule.forms import Schedule

_FORMS = ("cron", "every", "at")
MIN_EVERY = 1.0  # seconds: the shortest interval; each run starts a process
MAX_SECONDS = 100 * 365 * 86400.0  # the longest interval or timeout that makes sense


class TaskBase:
    """A unit of scheduled work; ``__tasks__.py`` subclasses it as ``reqcron.Task``."""

    name: ClassVar[str] = "TaskBase"
    #: Standard 5-field cron expression, or an alias such as "@daily".
    cron: ClassVar[str | None] = None
    #: Fixed interval of real time (a timedelta, or seconds).
    every: ClassVar[timedelta | float | None] = None
    #: Aware datetime the ``every`` intervals count from; default: first seen.
    anchor: ClassVar[datetime | None] = None
    #: Aware datetime of a single run.
    at: ClassVar[datetime | None] = None
    #: May a run start while the previous one still runs.
    overlap: ClassVar[bool] = False
    #: Stop a run after this long (SIGTERM, then SIGKILL ``stop_grace`` later).
    timeout: ClassVar[timedelta | float | None] = None
    #: Seconds between the SIGTERM of a stop and the SIGKILL.
    stop_grace: ClassVar[float] = 5.0
    #: A slot found later than this is recorded as missed, not run.
    grace: ClassVar[timedelta | float | None] = None
    #: IANA zone of the schedule; default: the DOCROOT's.
    timezone: ClassVar[str | None] = None
    #: Initial enabled state; the CLI and status page can change it.
    enabled: ClassVar[bool] = True
    #: Who hears when a run fails and when it recovers: "mailto:…", an http(s) URL
    #: (JSON POST) or "module:callable"; a string or a list (see alerts.py).
    notify: ClassVar[str | list[str] | None] = None
    #: A healthchecks.io-style URL pinged at start, on success and on failure.
    ping: ClassVar[str | None] = None
    #: True in a base class's own body keeps it from being registered.
    abstract: ClassVar[bool] = False
    #: Slots passed with no trigger: "one" run for all of them, "all" in order, "none".
    catch_up: ClassVar[str] = "one"
    #: A daily window "HH:MM-HH:MM" in the task's zone; slots outside it are not run.
    between: ClassVar[str | None] = None
    #: A run still going after this long sends one "running long" message.
    warn_after: ClassVar[timedelta | float | None] = None
    #: Keep running while the site is paused (`reqcron pause`).
    even_when_paused: ClassVar[bool] = False

    # The slot a run stands for (aware, in the task's zone; None on demand) and how
    # many slots it stands for; the runner sets them before run().
    slot: datetime | None = None
    slots: int = 1

    # The run context; the runner replaces these before run().
    config: Mapping[str, Any] = MappingProxyType({})
    docroot: Path | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if "abstract" not in cls.__dict__:
            cls.abstract = False  # abstract is never inherited

    def __init__(self) -> None:
        self._called: dict[str, Any] | None = None
        self._compiled: Schedule | None = None
        self._stop_requested: Callable[[], bool] = lambda: False
        self._open_database: Callable[[], Any] | None = None
        self._database: Any = None
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        """The task's logger, ``reqcron.tasks.<name>``; what it logs is kept in the history."""
        if self._logger is None:
            import logging  # not at import time: a task process should start fast

            self._logger = logging.getLogger(f"reqcron.tasks.{self.name}")
        return self._logger

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        self._logger = value

    def schedule(
        self,
        minute: int | Iterable[int] | None = None,
        hour: int | Iterable[int] | None = None,
        dow: int | Iterable[int] | None = None,
        day: int | Iterable[int] | None = None,
        month: int | Iterable[int] | None = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        anchor: datetime | None = None,
        at: datetime | None = None,
    ) -> None:
        """Set the schedule from ``__init__``: Draco fields, or one of cron/every/at."""
        fields = {"minute": minute, "hour": hour, "dow": dow, "day": day, "month": month}
        used = [k for k, v in (("cron", cron), ("every", every), ("at", at)) if v is not None]
        if any(v is not None for v in fields.values()):
            used.insert(0, "fields")
        if len(used) > 1:
            raise ScheduleError(self.name, f"schedule() got {' and '.join(used)}; give one form")
        if anchor is not None and every is None:
            raise ScheduleError(self.name, "anchor only goes with every")
        if self._called is not None:
            raise ScheduleError(self.name, "schedule() was called twice")
        if not used or used == ["fields"]:
            from .schedule.forms import fields_to_cron

            try:
                cron = fields_to_cron(minute, hour, dow, day, month)
            except (ValueError, TypeError) as exc:
                raise ScheduleError(self.name, str(exc)) from None
        self._called = {"cron": cron, "every": every, "anchor": anchor, "at": at}

    def run(self) -> Any:
        """Do the work; override this.  The return value is kept in the history."""
        return None

    def proceed(self) -> bool:
        """Return False once the run has been asked to stop (timeout, SIGTERM, disabled)."""
        return not self._stop_requested()

    @property
    def database(self) -> Any:
        """The DOCROOT's DB-API connection, opened on first use, closed after the run."""
        if self._database is None:
            if self._open_database is None:
                raise AttributeError("no database is configured in reqcron.toml")
            self._database = self._open_database()
        return self._database

    def next_run(self, after: datetime) -> datetime | None:
        """Return the first scheduled moment strictly after the aware ``after``."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("next_run() needs an aware datetime")
        return self.compiled_schedule().next_run(after)

    def compiled_schedule(self, default_zone: tzinfo | None = None) -> Schedule:
        """Validate the schedule and return it; raises ScheduleError."""
        if self._compiled is None:
            self._compiled = self._compile(default_zone)
        return self._compiled

    def _compile(self, default_zone: tzinfo | None) -> Schedule:
        from .schedule import forms as sch
        from .schedule.zones import local_zone, zone_named

        forms = {k: getattr(type(self), k) for k in _FORMS if getattr(type(self), k) is not None}
        anchor = type(self).anchor
        if self._called is not None:
            if forms:
                both = " and ".join(["schedule()", *forms])
                raise ScheduleError(self.name, f"it has {both}; give one form")
            forms = {k: v for k, v in self._called.items() if k in _FORMS and v is not None}
            anchor = self._called["anchor"]
        if len(forms) > 1:
            raise ScheduleError(self.name, f"it has {' and '.join(forms)}; give one form")
        if anchor is not None and "every" not in forms:
            raise ScheduleError(self.name, "anchor only goes with every")
        try:
            zone = zone_named(self.timezone) if self.timezone else default_zone or local_zone()
        except ValueError as exc:
            raise ScheduleError(self.name, str(exc)) from None
        for attr in ("timeout", "grace", "stop_grace", "warn_after"):
            _seconds(self.name, attr, getattr(self, attr))
        _check_policies(self)
        if "cron" in forms:
            if not isinstance(forms["cron"], str):
                raise ScheduleError(self.name, "cron must be a string")
            try:
                return sch.Cron(forms["cron"], zone)
            except ValueError as exc:
                raise ScheduleError(self.name, str(exc)) from None
        if "every" in forms:
            interval = _seconds(self.name, "every", forms["every"])
            assert interval is not None
            if not MIN_EVERY <= interval <= MAX_SECONDS:
                raise ScheduleError(
                    self.name, f"every must be between {MIN_EVERY:g} second (a process is "
                    "started per run) and 100 years"
                )
            if anchor is not None:
                _require_aware(self.name, "anchor", anchor)
            return sch.Every(timedelta(seconds=interval), anchor)
        if "at" in forms:
            _require_aware(self.name, "at", forms["at"])
            return sch.At(forms["at"])
        return sch.Never()

    def seconds(self, attr: str) -> float | None:
        """Return a duration attribute (timeout, grace, stop_grace) in seconds."""
        return _seconds(self.name, attr, getattr(self, attr))


def _seconds(task: str, attr: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0 < value <= MAX_SECONDS):
        raise ScheduleError(task, f"{attr} must be a positive number of seconds (at most "
                            "100 years) or a timedelta")
    return float(value)


CATCH_UP = ("one", "all", "none")


def _check_policies(task: TaskBase) -> None:
    """Refuse a catch_up or between a task cannot have (its load error)."""
    if task.catch_up not in CATCH_UP:
        raise ScheduleError(task.name, f"catch_up must be one of {', '.join(map(repr, CATCH_UP))},"
                            f" not {task.catch_up!r}")
    if task.between is not None:
        from .schedule.window import parse_between

        try:
            parse_between(task.between)
        except ValueError as exc:
            raise ScheduleError(task.name, str(exc)) from None


def _require_aware(task: str, attr: str, value: object) -> None:
    if not isinstance(value, datetime):
        raise ScheduleError(task, f"{attr} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(task, f"{attr} is a naive datetime; give it a tzinfo")
    # Shown and compared in any zone, so a day's margin inside what a datetime holds.
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        utc, problem = None, str(exc)
    if utc is None or not _EARLIEST <= utc.replace(tzinfo=None) <= _LATEST:
        reason = f" ({problem})" if utc is None else ""
        raise ScheduleError(task, f"{attr} {value.isoformat()} is out of range{reason}: it "
                            f"must lie between {_EARLIEST.date()} and {_LATEST.date()} UTC")


_EARLIEST = datetime.min + timedelta(days=2)
_LATEST = datetime.max - timedelta(days=2)
