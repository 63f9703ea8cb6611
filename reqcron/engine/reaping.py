"""Finding the runs whose process died, on any host, and recording what became of them.

Kept apart from the engine (docroot.py) so that a task process that only
needs this, such as the one running deferred calls, starts without the
catalog machinery.

Liveness is the run's lock, held by its process from the moment it takes
the row (pending, then running) until it ends: a row whose lock is free
belongs to a process that died.  A pending row without a lock is one whose
process never reached the state: lost after PENDING_TIMEOUT.  Every verdict
is a compare-and-swap on the attempt as read, so a stale reaper changes
nothing, and an outcome waiting in this host's spool is written, never
recorded as dead.
"""

from __future__ import annotations

from ..errors import ExitCode
from ..records import Status, now
from ..store.rows import Attempt
from . import spool
from .outcomes import DIED, replay
from .stored_calls import end_attempt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from pathlib import Path

    from ..records import Run
    from ..store import Store

#: A pending run whose process has not taken it (no lock in its row) after this long is lost.
PENDING_TIMEOUT = 30.0


def reap(store: Store, name: str | None = None, folder: Path | None = None, *,
         calls_only: bool = False, corrected: list[int] | None = None) -> list[Run]:
    """Write the outcomes waiting in ``folder``, then record the runs whose process died;
    return those as recorded.

    A task's run is recorded as failed.  A deferred call is queued again
    while it has retries left, else recorded as lost.  ``calls_only``: leave
    the tasks' runs to a process that knows where their failures are told
    (Docroot.reap), so every failure notifies the same way, whoever finds it.
    ``corrected`` gets the ids of runs whose spooled end undid a reaper's verdict.
    """
    waiting: set[int] = set()
    if folder is not None:
        replay(store, folder, corrected)
        waiting = spool.waiting_ids(folder)  # left because the state refused them just now
    ended_runs: list[Run] = []
    current = now()
    for run in store.runs(name, 1000, (Status.PENDING, Status.RUNNING)):
        assert run.id is not None
        if calls_only and run.call is None:
            continue
        if run.id in waiting or (run.lock and store.lock_alive(run.lock)):
            continue
        if store.leases and run.lease is not None and run.lease > current:
            continue  # its lock went with a lost session; its supervisor still renews it
        attempt = Attempt.of(run)
        if run.status == Status.RUNNING:
            if run.call is not None:
                ended = end_attempt(store, run, current, Status.LOST, error=DIED,
                                    exit_code=ExitCode.FAILED)
            else:
                ended = store.update_run_if(attempt, status=Status.FAILED, end=current,
                                            error=DIED, exit_code=ExitCode.FAILED)
            if ended:
                ended_runs.append(run)
                if run.lock:
                    store.forget_lock(run.lock)
        elif run.lock:  # its process took the row, then died before starting the run
            if store.update_run_if(attempt, status=Status.LOST, end=current,
                                   error="its process died before starting the run"):
                ended_runs.append(run)
                store.forget_lock(run.lock)
        elif current - run.created > PENDING_TIMEOUT:
            if store.update_run_if(attempt, status=Status.LOST, end=current,
                                   error=f"its process did not start within "
                                         f"{PENDING_TIMEOUT:.0f} s"):
                ended_runs.append(run)
    return ended_runs


def not_started(store: Store, run_id: int, error: str, exit_code: int | None = None) -> bool:
    """Record that a claimed run's process never started it: lost, with why.

    Only while the row is still pending and no live process holds it.
    """
    run = store.get_run(run_id)
    if run is None or run.status != Status.PENDING or (run.lock and store.lock_alive(run.lock)):
        return False
    return store.update_run_if(Attempt.of(run), status=Status.LOST, end=now(), error=error,
                               exit_code=exit_code)
