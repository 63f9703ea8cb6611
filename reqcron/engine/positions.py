"""Where the tasks' schedules stand: compiled once per signature, moved when the clock goes back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ..records import now
from ..store import CLOCK_KEY

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from pathlib import Path

    from ..loading.catalog import Catalog
    from ..schedule.forms import Schedule
    from ..store import Store

log = logging.getLogger("reqcron")


class Schedules:
    """Compiled schedules by signature (and, for ``every``, the anchor it counts from)."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, float | None], Schedule] = {}

    def get(self, signature: str, anchor: float | None) -> Schedule | None:
        """The schedule ``signature`` names, or None if it cannot be read back."""
        from ..schedule.forms import from_signature  # croniter: not on a task's way to run()

        key = (signature, anchor if signature.startswith("every:") else None)
        if key not in self._compiled:
            start = datetime.fromtimestamp(anchor, UTC) if anchor is not None else None
            schedule = from_signature(signature, start)
            if schedule is None:
                return None
            self._compiled[key] = schedule
        return self._compiled[key]


def follow_clock_set_back(store: Store, catalog: Catalog, schedules: Schedules,
                          docroot: Path) -> None:
    """Re-position the slots claimed at a wall time later than now (see schedule/clock.py)."""
    from ..schedule import clock

    current = now()  # not a caller's `at`: this is about the real clock
    for name, state in store.states().items():
        info = catalog.tasks.get(name)
        if info is None or state.next_due is None or state.signature != info.signature:
            continue
        schedule = schedules.get(info.signature, state.anchor or state.first_seen)
        if schedule is None:
            continue
        moved = clock.repositioned(schedule, state.next_due, current)
        if moved is not None:
            store.reposition(name, state.next_due, info.signature, moved)
    store.set_meta(CLOCK_KEY, repr(clock.offset()))
    log.warning("reqcron: %s: the clock was set back; schedules follow the new time", docroot)
