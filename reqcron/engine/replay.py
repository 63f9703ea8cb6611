"""`reqcron replay`: a task's past slots in a range, each run again with its own ``self.slot``.

The engine's part: which slots the range holds (the task's schedule and
``between``, both bounds inclusive) and the pending row of each, recorded
with trigger ``replay`` just before its run takes it (cli/time_commands.py
runs them, oldest first).
"""

from __future__ import annotations

from datetime import timedelta

from ..errors import UsageError
from ..records import Run, Status, Trigger, now
from ..schedule.forms import COUNT_LIMIT
from .catch_up import Window, dt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from .docroot import Docroot


def slots_between(doc: Docroot, name: str, start: float, end: float) -> list[float]:
    """Task ``name``'s slots in [start, end], oldest first; UsageError past COUNT_LIMIT."""
    info = doc.info(name)
    if end < start:
        raise UsageError("--to is before --from: nothing to replay")
    schedule = doc.schedule_of(name)
    window = Window(info)
    found: list[float] = []
    slot = schedule.next_run(dt(start) - timedelta(microseconds=1))
    while slot is not None and slot.timestamp() <= end:
        if window.holds(slot):
            found.append(slot.timestamp())
            if len(found) > COUNT_LIMIT:
                raise UsageError(f"that range holds more than {COUNT_LIMIT} slots of {name!r}")
        slot = schedule.next_run(slot)
    return found


def claim_replay(doc: Docroot, name: str, slot: float) -> int:
    """Record the pending run of ``name`` for past ``slot``; return its id (runtask's run)."""
    current = now()
    return doc.store.add_run(Run(task=name, trigger=Trigger.REPLAY, status=Status.PENDING,
                                 created=current, slot=slot, lateness=current - slot))
