"""How a due slot or a run-now request becomes a row of the history, atomically.

A claim is one compare-and-swap in the store (the slot's position, with
the schedule's signature) that also records the run: of all processes
trying at once, exactly one wins.  A slot that cannot run (task disabled,
found past its grace, task not loading) is recorded with why, and is not
returned to be started.
"""

from __future__ import annotations

from datetime import datetime

from ..errors import ExitCode
from ..records import Claim, Run, Status, TaskState, Trigger
from ..schedule import clock
from ..schedule.forms import Schedule
from ..store import Store
from .catch_up import Window, dt, passed, plan
from .pause import PAUSED

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..loading.catalog import TaskInfo


def claim_request(store: Store, info: TaskInfo, state: TaskState, error: str | None,
                  current: float, failed: list[tuple[int, str]] | None = None, *,
                  paused: bool = False) -> Claim | None:
    """Take the task's run-now request; the run to start, or None.

    The id and task of a run recorded as failed instead (the task does not
    load) are added to ``failed``, for its notification.
    """
    assert state.run_requested is not None
    run = Run(task=info.name, trigger=Trigger.RUN_NOW, status=Status.PENDING, created=current)
    _unless_runnable(info, state, run, error, current, scheduled=False,
                     paused=paused and not info.even_when_paused)
    run_id = store.claim_request(info.name, state.run_requested, run)
    if run_id is not None and run.status == Status.FAILED and failed is not None:
        failed.append((run_id, info.name))
    if run_id is None or run.status != Status.PENDING:
        return None
    return Claim(run_id, info.name, Trigger.RUN_NOW, None)


def claim_slot(store: Store, info: TaskInfo, state: TaskState, schedule: Schedule,
               error: str | None, trigger: Trigger, current: float,
               failed: list[tuple[int, str]] | None = None, *, paused: bool = False,
               history: int = 100) -> Claim | None:
    """Claim the task's due slot as its ``catch_up`` and ``between`` say (catch_up.py);
    the run to start, or None.

    As claim_request, a run recorded as failed instead goes into ``failed``.
    """
    assert state.next_due is not None
    first, moment = dt(state.next_due), dt(current)
    paused = paused and not info.even_when_paused
    if info.catch_up == "one" and not info.between:  # the common case, without a walk
        return _claim(store, info, state, state.next_due, schedule.latest_slot(first, moment),
                      schedule.count(first, moment), schedule.next_run(moment), error,
                      trigger, current, failed, paused)
    window = Window(info)
    slots = passed(schedule, first, moment, window)
    if not slots:  # every slot that passed is outside the window: move on, record nothing
        store.reposition(info.name, state.next_due, info.signature,
                         _ts(window.next_after(schedule, moment)))
        return None
    if not state.enabled or paused or error:  # recorded as one, as ever
        return _claim(store, info, state, state.next_due, slots[-1], len(slots),
                      window.next_after(schedule, moment), error, trigger, current, failed,
                      paused)
    if (info.catch_up == "all" and not info.overlap
            and store.runs(info.name, 1, (Status.PENDING, Status.RUNNING))):
        return None  # one slot after the other: the next once this run has ended
    steps = plan(info, schedule, slots, moment, window, history)
    expected = state.next_due
    if steps.missed:
        moved = steps.run if steps.run is not None else steps.following
        last = steps.missed[-1].timestamp()
        missed = Run(task=info.name, trigger=trigger, status=Status.MISSED, created=current,
                     slot=last, lateness=current - last, slots=len(steps.missed),
                     error=steps.why_missed, end=current)
        if store.claim_slot(info.name, expected, info.signature, _ts(moved), missed,
                            clock=clock.offset()) is None:
            return None
        if steps.run is None:
            return None
        expected = steps.run.timestamp()
    assert steps.run is not None
    return _claim(store, info, state, expected, steps.run, steps.slots, steps.following, None,
                  trigger, current, failed, False)


def _claim(store: Store, info: TaskInfo, state: TaskState, expected: float, at: datetime,
           slots: int, following: datetime | None, error: str | None, trigger: Trigger,
           current: float, failed: list[tuple[int, str]] | None, paused: bool
           ) -> Claim | None:
    """Move the task's position from ``expected`` to ``following`` and record the run of
    slot ``at`` (standing for ``slots``), or why it cannot run."""
    slot = at.timestamp()
    run = Run(task=info.name, trigger=trigger, status=Status.PENDING, created=current,
              slot=slot, lateness=current - slot, slots=slots)
    _unless_runnable(info, state, run, error, current, scheduled=True, paused=paused)
    run_id = store.claim_slot(info.name, expected, info.signature, _ts(following), run,
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
                     current: float, scheduled: bool, paused: bool = False) -> None:
    """Turn ``run`` into the record of why it cannot run, if it cannot."""
    lateness = run.lateness or 0.0
    if scheduled and not state.enabled:
        run.status, run.error = Status.SKIPPED, "disabled"
    elif paused:
        run.status, run.error = Status.SKIPPED, PAUSED
    elif scheduled and info.grace is not None and lateness > info.grace:
        run.status = Status.MISSED
        run.error = f"found {lateness:.0f} s late, past its grace of {info.grace:g} s"
    elif error:
        run.status, run.exit_code = Status.FAILED, ExitCode.USAGE
        run.error = f"not run: {error}"
    else:
        return
    run.end = current


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None
