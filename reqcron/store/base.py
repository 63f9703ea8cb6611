"""``Store``: what the engine needs from a state store, every method atomic.

A store keeps schedule positions (one row per task), the catalog of tasks
read from ``__tasks__.py`` (so each change is read once per site, not once
per worker), small named values (the DOCROOT's zone, the clock's high-water
mark) and the run history.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..records import RUN_COLUMNS, Record, Run, TaskState

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any


#: The signature of a task that is no longer in __tasks__.py.
REMOVED = "removed"
#: Where a host keeps its clock offset (a monotonic clock is one host's alone).
CLOCK_KEY = f"clock:{os.uname().nodename}"


class Lock(Protocol):
    """A held lock; freed by ``release()`` or by whatever ends its holder."""

    token: str  # what a run row keeps (Run.lock)
    fds: tuple[int, ...]  # what a task's forked child closes, so it never extends the lock

    def release(self) -> None: ...


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


class Store:
    """What the engine needs from a state store; every method is atomic."""

    #: Where the state is, for people (never with a password).
    location = ""

    # -- the pulse, and small named values ---------------------------------

    def pulse(self) -> Pulse:
        raise NotImplementedError

    def meta(self, key: str) -> str | None:
        raise NotImplementedError

    def init_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there; return the stored one."""
        raise NotImplementedError

    def set_meta(self, key: str, value: str) -> None:
        raise NotImplementedError

    # -- the catalog ----------------------------------------------------------

    def catalog(self) -> CatalogRow:
        raise NotImplementedError

    def begin_read(self, key: str, now: float, until: float) -> bool:
        """Take the lease to read the files of ``key``; False while another reader has it."""
        raise NotImplementedError

    def save_catalog(self, key: str, data: str, syncs: list[TaskSync], removed: list[str],
                     now: float) -> int:
        """Store a catalog and bring the task rows in line with it; return its version."""
        raise NotImplementedError

    # -- schedule positions ---------------------------------------------------

    def states(self) -> dict[str, TaskState]:
        raise NotImplementedError

    def state(self, name: str) -> TaskState | None:
        """One task's row (a task process needs no others)."""
        raise NotImplementedError

    def due_states(self, now: float) -> list[TaskState]:
        """The rows with a slot or a run-now request due at ``now``."""
        raise NotImplementedError

    def claim_slot(self, name: str, expected: float, signature: str,
                   new_next_due: float | None, run: Run, merge: bool = False,
                   clock: float | None = None) -> int | None:
        """Advance next_due from ``expected`` (schedule ``signature``) and record ``run``.

        ``clock`` (the claimer's wall-minus-monotonic offset) is kept as the
        pulse's ``clock``, so a later process can tell the clock was set back.

        Returns the run's id, or None when another process claimed the slot
        first or the schedule changed meanwhile.
        """
        raise NotImplementedError

    def reposition(self, name: str, expected: float | None, signature: str,
                   new_next_due: float | None) -> bool:
        """Move next_due from ``expected`` to ``new_next_due`` (after the clock went back)."""
        raise NotImplementedError

    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        """Take the run-now request made at ``requested`` and record ``run``."""
        raise NotImplementedError

    def request_run(self, name: str, now: float) -> None:
        raise NotImplementedError

    def set_enabled(self, name: str, enabled: bool) -> None:
        raise NotImplementedError

    # -- history --------------------------------------------------------------

    def add_run(self, run: Run, merge: bool = False) -> int:
        """Record ``run``; with ``merge``, fold it into an identical latest not-run row."""
        raise NotImplementedError

    def update_run(self, run_id: int, /, **values: Any) -> None:
        raise NotImplementedError

    def update_run_if(self, run_id: int, expected: str, /, **values: Any) -> bool:
        """Update the run only while its status is still ``expected``; True if it did."""
        raise NotImplementedError

    def get_run(self, run_id: int) -> Run | None:
        raise NotImplementedError

    def runs(self, name: str | None = None, limit: int = 50,
             statuses: tuple[str, ...] = (), *, before: int | None = None,
             after: int | None = None) -> list[Run]:
        """Return runs, newest first: the newest ``limit`` with an id below ``before``,
        or the ``limit`` just above ``after`` (a page of history either way)."""
        raise NotImplementedError

    def prune(self, name: str, keep: int) -> None:
        """Keep the latest ``keep`` finished runs of ``name`` (queued and open ones stay)."""
        raise NotImplementedError

    def run_stats(self) -> RunStats:
        """Count the kept runs by task and status, with their durations, in a few queries."""
        raise NotImplementedError

    # -- deferred calls ---------------------------------------------------------

    def take_call(self, now: float, pid: int, lock: str) -> Run | None:
        """Claim the queued call due first (status running, one more attempt), or None.

        Of all processes taking at once, on any host, exactly one gets each call.
        """
        raise NotImplementedError

    def release_calls(self, ids: list[int], hold: float) -> None:
        """Bring held calls (deferred during a request, due ``hold`` seconds late) forward."""
        raise NotImplementedError

    def due_calls(self, now: float, limit: int) -> int:
        """How many queued calls may run at ``now``, counting up to ``limit``."""
        raise NotImplementedError

    def calls_running(self) -> int:
        """How many deferred calls are running now."""
        raise NotImplementedError

    def prune_calls(self, before: float) -> int:
        """Delete the finished calls that ended before ``before``; return how many."""
        raise NotImplementedError

    # -- locks that die with their holder ---------------------------------------

    def take_task_lock(self, name: str) -> Lock | None:
        """Take ``name``'s overlap lock for this process's life; None while another run has it."""
        raise NotImplementedError

    def held_task_locks(self, names: list[str]) -> int:
        """How many of these task locks some process holds now (a look, not a claim)."""
        raise NotImplementedError

    def take_run_lock(self) -> Lock:
        """A fresh lock this run holds while it lives; its token goes into the run's row."""
        raise NotImplementedError

    def lock_alive(self, token: str) -> bool:
        """Tell whether the run lock ``token`` is still held, on any host."""
        raise NotImplementedError

    def forget_lock(self, token: str) -> None:
        """Tidy what a dead run's lock left behind."""

    def connection_fds(self) -> tuple[int, ...]:
        """Sockets a forked task process must close, so nothing it starts keeps them open."""
        return ()

    # -- health ---------------------------------------------------------------

    def verify(self) -> None:
        """Re-open if the state was replaced or deleted under us (off the hot path)."""

    def problems(self) -> list[str]:
        """Check that the state can be read and written; one sentence per problem."""
        raise NotImplementedError

    def dump(self) -> Dump:
        """Everything this state holds."""
        raise NotImplementedError

    def restore(self, dump: Dump) -> None:
        """Fill this empty state with ``dump`` (runs get new ids); StateError if not empty."""
        raise NotImplementedError

    def set_aside(self) -> str | None:
        """Move the state out of the way, keeping it; return where it went, or None."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def run_from_row(row: tuple[Any, ...]) -> Run:
    """A Run from a row of (id, *RUN_COLUMNS)."""
    run_id, *values = row
    return Run(id=run_id, **dict(zip(RUN_COLUMNS, values, strict=True)))


def check_run_fields(values: dict[str, Any]) -> None:
    """Refuse fields a run does not have (they name SQL columns)."""
    unknown = set(values) - set(RUN_COLUMNS)
    if unknown:
        raise TypeError(f"unknown run fields: {sorted(unknown)}")
