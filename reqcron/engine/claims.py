"""How a due slot or a run-now request becomes a row of the history, atomically.

A claim is one compare-and-swap in the store (the slot's position, with
the schedule's signature) that also records the run: of all processes
trying at once, exactly one wins.  A slot that cannot run (task disabled,
found past its grace, task not loading) is recorded with why, and is not
returned to be started.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import ExitCode
from ..records import Claim, Run, Status, TaskState, Trigger
from ..schedule import clock
from ..schedule.forms import Schedule
from ..store import Store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..loading.catalog import TaskInfo


def claim_request(store: Store, info: TaskInfo, state: TaskState, error: str | None,
                  current: float, failed: list[tuple[int, str]] | None = None
                  ) -> Claim | None:
    """Take the task's run-now request; the run to start, or None.

    The id and task of a run recorded as failed instead (the task does not
    load) are added to ``failed``, for its notification.
    """
    assert state.run_requested is not None
    run = Run(task=info.name, trigger=Trigger.RUN_NOW, status=Status.PENDING, created=current)
    _unless_runnable(info, state, run, error, current, scheduled=False)
    run_id = store.claim_request(info.name, state.run_requested, run)
    if run_id is not None and run.status == Status.FAILED and failed is not None:
        failed.append((run_id, info.name))
    if run_id is None or run.status != Status.PENDING:
        return None
    return Claim(run_id, info.name, Trigger.RUN_NOW, None)


def claim_slot(store: Store, info: TaskInfo, state: TaskState, schedule: Schedule,
               error: str | None, trigger: Trigger, current: float,
               failed: list[tuple[int, str]] | None = None) -> Claim | None:
    """Claim the task's latest due slot, standing for every slot passed since; or None.

    As claim_request, a run recorded as failed instead goes into ``failed``.
    """
    assert state.next_due is not None
    first, moment = _dt(state.next_due), _dt(current)
    slot = schedule.latest_slot(first, moment).timestamp()
    run = Run(task=info.name, trigger=trigger, status=Status.PENDING, created=current,
              slot=slot, lateness=current - slot, slots=schedule.count(first, moment))
    _unless_runnable(info, state, run, error, current, scheduled=True)
    following = schedule.next_run(moment)
    run_id = store.claim_slot(info.name, state.next_due, info.signature,
                              following.timestamp() if following else None, run,
                              merge=run.status != Status.PENDING, clock=clock.offset())
    if run_id is not None and run.status == Status.FAILED and failed is not None:
        failed.append((run_id, info.name))
    if run_id is None or run.status != Status.PENDING:
        return None
    return Claim(run_id, info.name, trigger, slot)


def park(store: Store, info: TaskInfo, state: TaskState, current: float,
         exc: Exception) -> str:
    """Record a task whose schedule failed, and stop its slots until its schedule changes."""
    error = f"its schedule failed: {type(exc).__name__}: {exc}"
    if store.reposition(info.name, state.next_due, info.signature, None):
        store.add_run(Run(task=info.name, trigger="schedule", status=Status.FAILED,
                          created=current, end=current, error=error))
    return error


def _unless_runnable(info: TaskInfo, state: TaskState, run: Run, error: str | None,
                     current: float, scheduled: bool) -> None:
    """Turn ``run`` into the record of why it cannot run, if it cannot."""
    lateness = run.lateness or 0.0
    if scheduled and not state.enabled:
        run.status, run.error = Status.SKIPPED, "disabled"
    elif scheduled and info.grace is not None and lateness > info.grace:
        run.status = Status.MISSED
        run.error = f"found {lateness:.0f} s late, past its grace of {info.grace:g} s"
    elif error:
        run.status, run.exit_code = Status.FAILED, ExitCode.USAGE
        run.error = f"not run: {error}"
    else:
        return
    run.end = current


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
