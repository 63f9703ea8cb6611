"""``Store``: what the engine needs from a state store, every method atomic.

A store keeps schedule positions (one row per task), the catalog of tasks
read from ``__tasks__.py`` (so each change is read once per site, not once
per worker), small named values (the DOCROOT's zone, the clock's high-water
mark) and the run history.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from ..records import Run, TaskState
from .rows import Attempt, CatalogRow, Dump, Pulse, RunCount, RunStats, TaskSync

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any, Protocol

__all__ = ["CLOCK_KEY", "REMOVED", "Attempt", "CatalogRow", "Dump", "Lock", "Pulse", "RunCount",
           "RunStats", "Store", "TaskSync"]

#: The signature of a task that is no longer in __tasks__.py.
REMOVED = "removed"


def host_id() -> str:
    """This host as the state tells hosts apart: its name and, where the kernel tells, its
    boot.  Two machines may share a name, and a monotonic clock starts at each boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return f"{os.uname().nodename}:{fh.read().strip()}"
    except OSError:
        return os.uname().nodename


#: This host, as the state tells hosts apart.
HOST = host_id()
#: Where a host keeps its clock offset (a monotonic clock is one host's, one boot's alone).
CLOCK_KEY = f"clock:{HOST}"


if TYPE_CHECKING:
    class Lock(Protocol):
        """A held lock; freed by ``release()`` or by whatever ends its holder."""

        token: str  # what a run row keeps (Run.lock)
        fds: tuple[int, ...]  # what a task's forked child closes, so it never extends the lock

        def release(self) -> None: ...
else:
    class Lock:
        """A held lock (a Protocol for the type checker; typing costs a task process ~3 ms)."""


class Store(ABC):
    """What the engine needs from a state store; every method is atomic."""

    #: Where the state is, for people (never with a password).
    location = ""
    #: Whether a run's lock can be lost with a database session while its process lives
    #: (PostgreSQL's advisory locks; not flock): then a running run's lease, renewed by
    #: its supervisor, keeps it alive in everyone's eyes across the loss.
    leases: bool = False
    #: Whether a statement may hang on a network (a black-holed route, a stalled server),
    #: beyond what the store's own timeouts bound: a request then stores its calls on a
    #: helper thread and waits a budget (calls/budget.py).  SQLite's busy timeout is bound.
    networked: bool = False

    # -- the pulse, and small named values ---------------------------------

    @abstractmethod
    def pulse(self) -> Pulse:
        """Read what a poll needs, in one cheap statement."""

    @abstractmethod
    def meta(self, key: str) -> str | None:
        """The value kept under ``key``, or None."""

    @abstractmethod
    def init_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there; return the stored one."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``, replacing any."""

    # -- the catalog ----------------------------------------------------------

    @abstractmethod
    def catalog(self) -> CatalogRow:
        """The stored catalog, with its reading lease."""

    @abstractmethod
    def begin_read(self, key: str, now: float, until: float) -> bool:
        """Take the lease to read the files of ``key``; False while another reader has it."""

    @abstractmethod
    def save_catalog(self, key: str, data: str, syncs: list[TaskSync], removed: list[str],
                     now: float) -> int:
        """Store a catalog and bring the task rows in line with it; return its version."""

    # -- schedule positions ---------------------------------------------------

    @abstractmethod
    def states(self) -> dict[str, TaskState]:
        """Every task's row, by name."""

    @abstractmethod
    def state(self, name: str) -> TaskState | None:
        """One task's row (a task process needs no others)."""

    @abstractmethod
    def due_states(self, now: float) -> list[TaskState]:
        """The rows with a slot or a run-now request due at ``now``."""

    @abstractmethod
    def claim_slot(self, name: str, expected: float, signature: str,
                   new_next_due: float | None, run: Run, merge: bool = False,
                   clock: float | None = None) -> int | None:
        """Advance next_due from ``expected`` (schedule ``signature``) and record ``run``.

        ``clock`` (the claimer's wall-minus-monotonic offset) is kept as the
        pulse's ``clock``, so a later process can tell the clock was set back.

        Returns the run's id, or None when another process claimed the slot
        first or the schedule changed meanwhile.
        """

    @abstractmethod
    def reposition(self, name: str, expected: float | None, signature: str,
                   new_next_due: float | None) -> bool:
        """Move next_due from ``expected`` to ``new_next_due`` (after the clock went back)."""

    @abstractmethod
    def claim_request(self, name: str, requested: float, run: Run) -> int | None:
        """Take the run-now request made at ``requested`` and record ``run``."""

    @abstractmethod
    def request_run(self, name: str, now: float) -> None:
        """Ask for a run of ``name`` now (a second ask before it is claimed is the same)."""

    @abstractmethod
    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable ``name``'s scheduled runs."""

    # -- history --------------------------------------------------------------

    @abstractmethod
    def add_run(self, run: Run, merge: bool = False) -> int:
        """Record ``run``; with ``merge``, fold it into an identical latest not-run row."""

    def add_runs(self, runs: list[Run]) -> list[int]:
        """Record ``runs`` in one transaction (a burst of calls: one write, not one each)."""
        return [self.add_run(run) for run in runs]

    @abstractmethod
    def update_run(self, run_id: int, /, **values: Any) -> None:
        """Set fields of a run (text capped as a run keeps it)."""

    @abstractmethod
    def update_run_if(self, attempt: Attempt, /, **values: Any) -> bool:
        """Update the run only while it is still ``attempt`` (status, lock, attempts).

        True if it did; False when another process moved it on first.
        """

    @abstractmethod
    def get_run(self, run_id: int) -> Run | None:
        """The run with this id, or None."""

    @abstractmethod
    def runs(self, name: str | None = None, limit: int = 50,
             statuses: tuple[str, ...] = (), *, before: int | None = None,
             after: int | None = None) -> list[Run]:
        """Return runs, newest first: the newest ``limit`` with an id below ``before``,
        or the ``limit`` just above ``after`` (a page of history either way)."""

    @abstractmethod
    def prune(self, name: str, keep: int) -> None:
        """Keep the latest ``keep`` finished runs of ``name`` (queued and open ones stay)."""

    @abstractmethod
    def run_stats(self) -> RunStats:
        """Count the kept runs by task and status, with their durations, in a few queries."""

    # -- deferred calls ---------------------------------------------------------

    @abstractmethod
    def take_call(self, now: float, pid: int, lock: str) -> Run | None:
        """Claim the queued call due first (status running, one more attempt), or None.

        Of all processes taking at once, on any host, exactly one gets each call.
        """

    @abstractmethod
    def find_call(self, token: str) -> int | None:
        """The id of the call stored with spool ``token`` (calls/delay.py), if it is stored."""

    @abstractmethod
    def release_calls(self, ids: list[int], hold: float) -> None:
        """Bring held calls (deferred during a request, due ``hold`` seconds late) forward."""

    @abstractmethod
    def due_calls(self, now: float, limit: int) -> int:
        """How many queued calls may run at ``now``, counting up to ``limit``."""

    @abstractmethod
    def calls_running(self) -> int:
        """How many deferred calls are running now."""

    @abstractmethod
    def prune_calls(self, before: float) -> int:
        """Delete the finished calls that ended before ``before``; return how many."""

    # -- locks that die with their holder ---------------------------------------

    @abstractmethod
    def take_task_lock(self, name: str) -> Lock | None:
        """Take ``name``'s overlap lock for this process's life; None while another run has it."""

    @abstractmethod
    def held_task_locks(self, names: list[str]) -> int:
        """How many of these task locks some process holds now (a look, not a claim)."""

    @abstractmethod
    def take_run_lock(self) -> Lock:
        """A fresh lock this run holds while it lives; its token goes into the run's row."""

    @abstractmethod
    def lock_alive(self, token: str) -> bool:
        """Tell whether the run lock ``token`` is still held, on any host."""

    def keep_locks(self) -> list[str]:
        """Hold this process's locks again if the session holding them went away.

        Returns the tokens another process took meanwhile (lost to it).  A
        cheap look when nothing happened; a lock that dies only with its
        process (flock) needs nothing.
        """
        return []

    def forget_lock(self, token: str) -> None:  # noqa: B027 - most locks leave nothing
        """Tidy what a dead run's lock left behind."""

    def connection_fds(self) -> tuple[int, ...]:
        """Sockets a forked task process must close, so nothing it starts keeps them open."""
        return ()

    def connected(self) -> bool:
        """Whether a statement now needs no connection opened first (a file: always)."""
        return True

    # -- health ---------------------------------------------------------------

    def verify(self) -> None:  # noqa: B027 - a file can be replaced, a server cannot
        """Re-open if the state was replaced or deleted under us (off the hot path)."""

    @abstractmethod
    def problems(self) -> list[str]:
        """Check that the state can be read and written; one sentence per problem."""

    @abstractmethod
    def dump(self) -> Dump:
        """Everything this state holds."""

    @abstractmethod
    def restore(self, dump: Dump) -> None:
        """Fill this empty state with ``dump`` (runs get new ids); StateError if not empty."""

    @abstractmethod
    def set_aside(self) -> str | None:
        """Move the state out of the way, keeping it; return where it went, or None."""

    @abstractmethod
    def close(self) -> None:
        """Close this process's connections; its locks go with them."""
