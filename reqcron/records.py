"""Plain records shared by the engine, the stores and the surfaces: no I/O.

Not dataclasses: importing them (and the inspect module they pull in)
costs every task process ~5 ms before it reaches run().  Times are UTC
epoch seconds (floats) throughout.
"""

from __future__ import annotations

import time
from enum import StrEnum


class Record:
    """Slots, a readable repr, and equality by value."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))


def now() -> float:
    """Return the current time as UTC epoch seconds."""
    return time.time()


class Status(StrEnum):
    """What became of a run, or of a slot that did not run."""

    QUEUED = "queued"  # a deferred call waiting for its time or for a task process
    PENDING = "pending"  # claimed, its process not started yet
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # not run: disabled, or the previous run still going
    MISSED = "missed"  # found later than the task's grace
    LOST = "lost"  # its process died without recording an end
    CANCELLED = "cancelled"  # a deferred call cancelled while queued: never run

    # The one classification of statuses; every surface and store asks these.
    @property
    def is_open(self) -> bool:
        """Not ended yet: queued, pending or running (kept by pruning, whatever its age)."""
        return self in OPEN

    @property
    def is_final(self) -> bool:
        """Ended: a deferred call in one of these is ready."""
        return self not in OPEN

    @property
    def ran(self) -> bool:
        """Ended after its process was started: ok, failed, timeout or lost."""
        return self in RAN

    @property
    def is_failing(self) -> bool:
        """Ended badly: failed, timeout or lost (what notify and the page call failing)."""
        return self in FAILING


class Trigger(StrEnum):
    """What started a run."""

    REQUEST = "request"  # the middleware, on an HTTP request
    DUE = "due"  # `reqcron due`
    CRON = "cron"  # `runtask` that found its slot due
    MANUAL = "manual"  # `runtask` / `reqcron run` outside any slot
    RUN_NOW = "run_now"  # Docroot.run_now / the status page
    CALL = "call"  # a deferred call (@delay, Task.delay)
    REPLAY = "replay"  # `reqcron replay`: a past slot run again


#: Not ended: queued, pending, running.
OPEN = frozenset({Status.QUEUED, Status.PENDING, Status.RUNNING})
#: How a run ends; a deferred call in any of these is ready.
FINAL = frozenset(Status) - OPEN
#: Ended after its process was started.
RAN = frozenset({Status.OK, Status.FAILED, Status.TIMEOUT, Status.LOST})
#: Ended badly.
FAILING = RAN - {Status.OK}


class TaskState(Record):
    """A task's row in the store."""

    __slots__ = ("name", "next_due", "anchor", "enabled", "run_requested", "signature",
                 "first_seen")

    def __init__(
        self,
        name: str,
        next_due: float | None,
        anchor: float | None,
        enabled: bool,
        run_requested: float | None,
        signature: str | None,
        first_seen: float,
    ):
        self.name = name
        self.next_due = next_due  # the first slot not yet claimed
        self.anchor = anchor  # what `every` without an anchor counts from
        self.enabled = enabled
        self.run_requested = run_requested  # when run_now() asked, until claimed
        self.signature = signature  # the schedule next_due was computed for
        self.first_seen = first_seen


RUN_COLUMNS = (
    "task",
    "trigger",
    "status",
    "created",
    "slot",
    "lateness",
    "start",
    "end",
    "exit_code",
    "pid",
    "output",
    "return_value",
    "error",
    "traceback",
    "lock",
    "slots",
    "call",
    "attempts",
    "due",
    "notified",
    "lease",
)


class Run(Record):
    """One row of the history: a run, or a slot that did not run and why."""

    __slots__ = ("id", *RUN_COLUMNS)

    def __init__(
        self,
        task: str,
        trigger: str,
        status: str,
        created: float,
        *,
        id: int | None = None,
        slot: float | None = None,
        lateness: float | None = None,
        start: float | None = None,
        end: float | None = None,
        exit_code: int | None = None,
        pid: int | None = None,
        output: str | None = None,
        return_value: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        lock: str | None = None,
        slots: int = 1,
        call: str | None = None,
        attempts: int = 0,
        due: float | None = None,
        notified: str | None = None,
        lease: float | None = None,
    ):
        self.id = id
        self.task = task
        self.trigger = trigger
        self.status = status
        self.created = created
        self.slot = slot  # the scheduled moment it stands for; None outside a schedule
        self.lateness = lateness  # seconds between the slot and its claim
        self.start = start
        self.end = end
        self.exit_code = exit_code
        self.pid = pid
        self.output = output
        self.return_value = return_value
        self.error = error
        self.traceback = traceback
        self.lock = lock  # path of the lock file its process holds while alive
        self.slots = slots  # how many slots this row stands for (catch-up, coalesced skips)
        self.call = call  # a deferred call's JSON (calls.Call); None for a task's run
        self.attempts = attempts  # a deferred call's attempts so far
        self.due = due  # when a queued call may run
        self.notified = notified  # what notify sent (or failed to) about this run
        self.lease = lease  # a running run is alive until then, its lock or not (PostgreSQL)

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


class Claim(Record):
    """A run that Docroot.due() claimed: its process must now be started."""

    __slots__ = ("run_id", "task", "trigger", "slot")

    def __init__(self, run_id: int, task: str, trigger: Trigger, slot: float | None):
        self.run_id = run_id
        self.task = task
        self.trigger = trigger
        self.slot = slot


class LoadError(Record):
    """One problem found while loading a DOCROOT, with where it is."""

    __slots__ = ("file", "line", "message", "task", "module")

    def __init__(self, file: str, line: int | None, message: str, task: str | None = None,
                 module: str | None = None):
        self.file = file
        self.line = line
        self.message = message
        self.task = task
        #: A module of ``modules`` that does not import (``task`` is None then):
        #: its tasks keep their last good definitions, the others load.
        self.module = module

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"
