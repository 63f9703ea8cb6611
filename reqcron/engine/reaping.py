"""Finding the runs whose process died, on any host, and recording what became of them.

Kept apart from the engine (docroot.py) so that a task process that only
needs this, such as the one running deferred calls, starts without the
catalog machinery.
"""

from __future__ import annotations

from ..errors import ExitCode
from ..records import Status, now
from .stored_calls import end_attempt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..records import Run
    from ..store import Store

#: A pending run whose process has not started after this long is lost.
PENDING_TIMEOUT = 30.0


def reap(store: Store, name: str | None = None) -> list[Run]:
    """Record the runs whose process died; return them as recorded.

    A task's run is recorded as failed.  A deferred call is queued again
    while it has retries left, else recorded as lost.
    """
    ended_runs: list[Run] = []
    current = now()
    for run in store.runs(name, 1000, (Status.PENDING, Status.RUNNING)):
        assert run.id is not None
        if run.status == Status.RUNNING and not (run.lock and store.lock_alive(run.lock)):
            error = "its process died without recording an end (killed?)"
            if run.call is not None:
                ended = end_attempt(store, run, current, Status.LOST, error=error,
                                    exit_code=ExitCode.FAILED)
            else:
                ended = store.update_run_if(run.id, Status.RUNNING, status=Status.FAILED,
                                            end=current, error=error, exit_code=ExitCode.FAILED)
            if ended:
                ended_runs.append(run)
                if run.lock:
                    store.forget_lock(run.lock)
        elif run.status == Status.PENDING and current - run.created > PENDING_TIMEOUT:
            if not_started(store, run.id, f"its process did not start within "
                                          f"{PENDING_TIMEOUT:.0f} s"):
                ended_runs.append(run)
    return ended_runs


def not_started(store: Store, run_id: int, error: str, exit_code: int | None = None) -> bool:
    """Record that a claimed run's process never started it: lost, with why."""
    return store.update_run_if(run_id, Status.PENDING, status=Status.LOST, end=now(),
                               error=error, exit_code=exit_code)
