"""Which of the slots passed since a task's last claim are run, and which are recorded missed.

A task's ``catch_up`` names the policy (APScheduler's coalesce, Hangfire's
misfire handling):

- ``"one"``: one run for all of them, standing for each (``self.slots``);
- ``"all"``: each in order, oldest first, one at a time (the next is
  claimed once the previous run ended), at most ``history`` of them: older
  ones, and those past the task's ``grace``, are recorded missed;
- ``"none"``: the latest runs if it is found within the task's grace (one
  minute by default), and every earlier one is recorded missed; found later,
  all are recorded missed and the task waits for its next slot.

``between`` narrows every policy to the slots inside its daily window:
the others are neither run nor recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..schedule.forms import COUNT_LIMIT
from ..schedule.window import parse_between, within
from ..schedule.zones import zone_named

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from datetime import tzinfo

    from ..loading.catalog import TaskInfo
    from ..schedule.forms import Schedule

#: How late a slot of a catch_up = "none" task without a grace may be found and still run.
NONE_TOLERANCE = 60.0


class Window:
    """A task's ``between`` window, or none (every slot is in it)."""

    __slots__ = ("bounds", "zone")

    def __init__(self, info: TaskInfo):
        self.bounds = parse_between(info.between) if info.between else None
        self.zone: tzinfo | None = (zone_named(info.task_zone or "UTC") if self.bounds
                                    else None)

    def holds(self, slot: datetime) -> bool:
        if self.bounds is None or self.zone is None:
            return True
        return within(slot, self.bounds, self.zone)

    def next_after(self, schedule: Schedule, after: datetime) -> datetime | None:
        """The first slot after ``after`` in the window (or the first at all, if none is
        found within COUNT_LIMIT slots: a later claim moves on from it)."""
        slot = schedule.next_run(after)
        first = slot
        for _ in range(COUNT_LIMIT):
            if slot is None or self.holds(slot):
                return slot
            slot = schedule.next_run(slot)
        return first


def passed(schedule: Schedule, first: datetime, moment: datetime, window: Window
           ) -> list[datetime]:
    """The slots in [first, moment] inside the window, oldest first (at most COUNT_LIMIT)."""
    found: list[datetime] = []
    slot: datetime | None = first
    for _ in range(COUNT_LIMIT):
        if slot is None or slot > moment:
            break
        if window.holds(slot):
            found.append(slot)
        slot = schedule.next_run(slot)
    return found


def dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Plan:
    """What one claim does: record ``missed`` slots (oldest first), then run ``run``
    standing for ``slots`` slots, and move the task's position on to ``following``."""

    __slots__ = ("missed", "run", "slots", "following", "why_missed")

    def __init__(self, missed: list[datetime], run: datetime | None, slots: int,
                 following: datetime | None, why_missed: str = ""):
        self.missed = missed
        self.run = run
        self.slots = slots
        self.following = following
        self.why_missed = why_missed


def plan(info: TaskInfo, schedule: Schedule, slots: list[datetime], moment: datetime,
         window: Window, history: int) -> Plan:
    """The claim of ``slots`` (passed(), not empty) at ``moment`` under the task's policy."""
    after_now = window.next_after(schedule, moment)
    latest = slots[-1]
    if info.catch_up == "none":
        tolerance = info.grace if info.grace is not None else NONE_TOLERANCE
        if (moment - latest).total_seconds() > tolerance:
            return Plan(slots, None, 0, after_now,
                        f"found {(moment - latest).total_seconds():.0f} s late, past "
                        f"{tolerance:g} s: catch_up = 'none' waits for the next slot")
        return Plan(slots[:-1], latest, 1, after_now,
                    "passed with no trigger: catch_up = 'none' runs only the latest")
    if info.catch_up == "all":
        skip = max(0, len(slots) - history)
        why = f"catch_up = 'all' runs at most history ({history}) missed slots"
        if info.grace is not None:
            late = sum(1 for s in slots if (moment - s).total_seconds() > info.grace)
            if late > skip:
                skip, why = late, f"found past its grace of {info.grace:g} s"
        if skip >= len(slots):
            return Plan(slots, None, 0, after_now, why)
        slot = slots[skip]
        return Plan(slots[:skip], slot, 1, window.next_after(schedule, slot), why)
    return Plan([], latest, len(slots), after_now)
