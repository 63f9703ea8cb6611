"""The deferred-call queue as the engine sees it: when to look again, how many to start."""

from __future__ import annotations

from .stored_calls import SLOT_LOCK

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..store import Pulse, Store


def next_wait(pulse: Pulse, current: float) -> float | None:
    """When the earliest call still waiting for its time comes due, if any.

    Calls due now do not count: task processes are running them, or are
    started at the next look.
    """
    due = pulse.call_due
    return due if due is not None and due > current else None


def counts(store: Store) -> dict[str, int]:
    """How many deferred calls wait (for their time, or a process) and how many run."""
    return {"queued": store.due_calls(float("inf"), 1_000_000),
            "running": store.calls_running()}


def drainers_wanted(store: Store, most: int, current: float, mine: int = 0) -> int:
    """How many task processes to start for the calls due now, ``most`` at once in all.

    ``mine``: the caller's own processes still alive, some perhaps still
    starting with no slot taken yet: at least that many slots count as taken
    (else each look during a burst would start ``most`` more).
    """
    waiting = store.due_calls(current, most)  # one small query, as a pulse is
    if not waiting:
        return 0
    started = max(mine, store.held_task_locks([SLOT_LOCK.format(i) for i in range(most)]))
    if started:
        # A process between two calls (or lingering after its last) takes the next.
        waiting -= max(0, started - store.calls_running())
    return max(0, min(waiting, most - started))
