"""The wall clock set back: seen against the monotonic clock, followed as Debian cron does.

Interval and wildcard schedules go on from the new time; a fixed-time
schedule does not repeat a slot that already ran unless the clock went back
by three hours or more.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .forms import Cron, Schedule

#: A wall clock this much further behind the monotonic one than at the
#: latest claim has been set back.
SLACK = 1.0
#: Debian cron: after the clock is set back by less than this, fixed-time
#: jobs that already ran do not run again.
REPEAT = 3 * 3600.0


def offset() -> float:
    """Wall clock minus monotonic clock: it drops when the wall clock is set back.

    A process that was merely slow reads both clocks together, so it never
    mistakes its own delay for a change of the clock; after a reboot the
    offset only grows.
    """
    return time.time() - time.monotonic()


def went_back(stored: float | None) -> bool:
    """Tell whether the clock was set back since the claim that stored ``stored``."""
    return stored is not None and offset() < stored - SLACK


def repositioned(schedule: Schedule, next_due: float, current: float) -> float | None:
    """Where ``next_due`` belongs after the clock went back to ``current``; None: leave it.

    Only a slot later than the schedule allows from now moves, so calling
    this needlessly changes nothing.
    """
    moment = datetime.fromtimestamp(current, UTC)
    expected = schedule.next_run(moment)
    if expected is None:
        return None
    limit = expected
    if isinstance(schedule, Cron) and not schedule.wildcard:
        later = schedule.next_run(datetime.fromtimestamp(current + REPEAT, UTC))
        limit = later or expected
    return expected.timestamp() if next_due > limit.timestamp() else None
