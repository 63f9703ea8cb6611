"""The rows a store hands the engine: plain data, no SQL."""

from __future__ import annotations

from ..records import Record, Run, TaskState

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any


#: Seconds a running run stays alive without its lock where a lost database session drops
#: locks (Store.leases): its supervisor renews the lease every LEASE / 3.
LEASE = 10.0


class Attempt(Record):
    """The attempt of a run that a transition means, as its writer read it.

    A transition (start, end, reap, retry) changes the row only while it
    still holds this attempt: the same status, lock token and number of
    attempts (Oban's ``UPDATE … WHERE state = 'executing' AND attempt = $n``),
    so a stale reader can never end, requeue or take over another attempt.
    """

    __slots__ = ("id", "status", "lock", "attempts")

    def __init__(self, id: int, status: str, lock: str | None = None, attempts: int = 0):
        self.id = id
        self.status = status
        self.lock = lock  # the token of the lock its process holds (None: not started)
        self.attempts = attempts

    @classmethod
    def of(cls, run: Run) -> Attempt:
        """The attempt ``run`` (a row as read) is in."""
        assert run.id is not None
        return cls(run.id, run.status, run.lock, run.attempts)

    def moved(self, **values: Any) -> Attempt:
        """The attempt the row holds after a transition that set ``values``."""
        return Attempt(self.id, values.get("status", self.status), values.get("lock", self.lock),
                       values.get("attempts", self.attempts))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "lock": self.lock,
                "attempts": self.attempts}


class TaskSync(Record):
    """Where a task's row must be after a catalog change: created or re-positioned."""

    __slots__ = ("name", "signature", "next_due", "anchor", "enabled")

    def __init__(self, name: str, signature: str, next_due: float | None, anchor: float | None,
                 enabled: bool):
        self.name = name
        self.signature = signature
        self.next_due = next_due
        self.anchor = anchor
        self.enabled = enabled


class CatalogRow(Record):
    """The stored catalog: its version, the files' key it was read from, its data."""

    __slots__ = ("version", "key", "data", "reading_key", "reading_until")

    def __init__(self, version: int, key: str | None, data: str | None,
                 reading_key: str | None = None, reading_until: float | None = None):
        self.version = version
        self.key = key
        self.data = data
        self.reading_key = reading_key
        self.reading_until = reading_until


class Pulse(Record):
    """What a poll reads, in one cheap statement whatever the number of tasks."""

    __slots__ = ("catalog_version", "catalog_key", "next_due", "run_requested", "clock",
                 "call_due")

    def __init__(self, catalog_version: int, catalog_key: str | None, next_due: float | None,
                 run_requested: float | None, clock: float | None,
                 call_due: float | None = None):
        self.catalog_version = catalog_version
        self.catalog_key = catalog_key
        self.next_due = next_due  # the earliest unclaimed slot of any task
        self.run_requested = run_requested  # the oldest open run-now request
        self.clock = clock  # the wall-minus-monotonic clock offset at the latest claim
        self.call_due = call_due  # the earliest time a queued deferred call may run

    @property
    def earliest(self) -> float | None:
        """When due() could next find work."""
        times = [t for t in (self.next_due, self.run_requested) if t is not None]
        return min(times, default=None)


class RunCount(Record):
    """The kept runs of one task (or deferred calls of one function) in one status."""

    __slots__ = ("task", "status", "call", "runs", "timed", "seconds", "longest", "last_end")

    def __init__(self, task: str, status: str, call: bool, runs: int, timed: int,
                 seconds: float, longest: float | None, last_end: float | None):
        self.task = task
        self.status = status
        self.call = call  # deferred calls, not a task's runs
        self.runs = runs
        self.timed = timed  # how many of them have a start and an end
        self.seconds = seconds  # their durations added up
        self.longest = longest
        self.last_end = last_end


class RunStats(Record):
    """The kept history in aggregate, read in one go (for metrics)."""

    __slots__ = ("counts", "lateness", "duration")

    def __init__(self, counts: list[RunCount], lateness: dict[str, float],
                 duration: dict[str, float]):
        self.counts = counts
        self.lateness = lateness  # task -> lateness of its latest claimed slot
        self.duration = duration  # task -> duration of its latest run that ended

    @classmethod
    def from_rows(cls, counts: list[tuple[Any, ...]], latest: list[tuple[Any, ...]]) -> RunStats:
        """From rows of (task, status, call, runs, timed, seconds, longest, last_end) and of
        (id, task, lateness, duration) for each task's latest run having either."""
        lateness: dict[str, float] = {}
        duration: dict[str, float] = {}
        # Oldest first, so each task keeps its latest non-null value of each.
        for _, task, late, took in sorted(latest):
            if late is not None:
                lateness[task] = float(late)
            if took is not None:
                duration[task] = float(took)
        return cls([RunCount(task, status, bool(call), int(runs), int(timed), float(seconds or 0),
                             longest, last_end)
                    for task, status, call, runs, timed, seconds, longest, last_end in counts],
                   lateness, duration)


class Dump(Record):
    """A whole state, for copying it to another store (``reqcron state copy``)."""

    __slots__ = ("meta", "catalog", "tasks", "runs")

    def __init__(self, meta: dict[str, str], catalog: CatalogRow, tasks: list[TaskState],
                 runs: list[Run]):
        self.meta = meta
        self.catalog = catalog
        self.tasks = tasks
        self.runs = runs  # oldest first
