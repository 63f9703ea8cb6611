"""A task's marks (disabled, broken, failing, starved, paused, running long): their one rule.

``marks`` makes them from what is known of one task.  ``glance`` knows it of
every task at once, from a few reads whatever their number (the catalog,
the task rows, the history's aggregate, the open runs): reading each task's
runs instead costs a query a task, 10,000 of them for a page that shows 100.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import ScheduleError
from .records import FAILING, RAN, Status

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .engine.docroot import Docroot
    from .engine.pause import Pause
    from .loading.catalog import TaskInfo
    from .records import Run, TaskState
    from .schedule.forms import Schedule
    from .store.rows import RunStats

#: A task is starved when its first unclaimed slot is older than this many
#: periods (and at least STARVED_MIN seconds): nothing triggered it.
STARVED_MIN = 120.0
#: Open runs read at once (as reaping reads them): more than any site runs at a time.
OPEN_RUNS = 1000
#: Every mark, in the order they are shown.
MARKS = ("disabled", "broken", "failing", "starved", "paused", "running long")


def is_starved(schedule: Schedule, state: TaskState | None, at: float) -> bool:
    """Whether the task's first unclaimed slot passed long ago: nothing triggers it."""
    if state is None or not state.enabled or state.next_due is None:
        return False
    if at - state.next_due <= STARVED_MIN:
        # Never starved, whatever its period: skip computing the next slot (croniter
        # takes ~0.2 ms a task, seconds for a page, probe or scrape of 10,000 tasks).
        return False
    following = schedule.next_run(datetime.fromtimestamp(state.next_due, UTC))
    period = (following.timestamp() - state.next_due) if following else 0.0
    return at - state.next_due > max(2 * period, STARVED_MIN)


def starved(doc: Docroot, name: str, state: TaskState | None, at: float) -> bool:
    """Whether task ``name`` is starved; one whose schedule cannot be read is not (it is
    shown broken instead)."""
    if state is None or state.next_due is None or at - state.next_due <= STARVED_MIN:
        return False  # known without compiling its schedule
    try:
        return is_starved(doc.schedule_of(name, state), state, at)
    except ScheduleError:
        return False


def running_long(info: TaskInfo, runs: Iterable[Run], at: float) -> bool:
    """Whether one of the task's own runs (not its calls) is running past its warn_after."""
    limit = info.warn_after
    if not limit:
        return False
    return any(r.status == Status.RUNNING and r.call is None and r.start
               and at - r.start > limit for r in runs)


def marks(*, enabled: bool, broken: bool, last_status: str | None, starved: bool,
          paused: bool, running_long: bool) -> list[str]:
    """A task's marks, in MARKS order; ``last_status``: that of its last run that ran."""
    # Spelled out, not a table: glance() calls this for every task of a site.
    found = []
    if not enabled:
        found.append("disabled")
    if broken:
        found.append("broken")
    if last_status in FAILING:
        found.append("failing")
    if starved:
        found.append("starved")
    if paused:
        found.append("paused")
    if running_long:
        found.append("running long")
    return found


def open_runs(doc: Docroot) -> dict[str, list[Run]]:
    """Every pending or running run (calls too), by task, newest first: one read."""
    found: dict[str, list[Run]] = {}
    for run in doc.recent_runs(None, OPEN_RUNS, (Status.PENDING, Status.RUNNING)):
        found.setdefault(run.task, []).append(run)
    return found


def last_statuses(stats: RunStats) -> dict[str, str]:
    """Each task's status of its last own run that ran, from the history's aggregate.

    The status whose latest end is the latest: a task's runs (overlap off)
    end in the order they start.  Runs that overlap may end out of order, so
    this orders a page; the marks shown come from the task's runs themselves.
    """
    latest: dict[str, tuple[float, str]] = {}
    for count in stats.counts:
        if count.call or count.status not in RAN or count.last_end is None:
            continue
        if count.task not in latest or count.last_end > latest[count.task][0]:
            latest[count.task] = (count.last_end, count.status)
    return {task: status for task, (_, status) in latest.items()}


def glance(doc: Docroot, at: float, states: dict[str, TaskState], pause: Pause | None,
           opened: dict[str, list[Run]], stats: RunStats) -> dict[str, list[str]]:
    """Every catalogued task's marks, from the history's aggregate ``stats`` (``failing``)
    and the ``opened`` runs (``running long``) rather than each task's runs."""
    catalog = doc.catalog()
    last = last_statuses(stats)
    found = {}
    for name, info in catalog.tasks.items():
        state = states.get(name)
        found[name] = marks(
            enabled=state.enabled if state is not None else info.enabled,
            broken=bool(catalog.error_of(name)), last_status=last.get(name),
            starved=starved(doc, name, state, at),
            paused=pause is not None and not info.even_when_paused,
            running_long=running_long(info, opened.get(name, ()), at))
    return found


def count(marked: dict[str, list[str]]) -> dict[str, int]:
    """How many tasks bear each mark (every mark, 0 when none)."""
    counts = dict.fromkeys(MARKS, 0)
    for found in marked.values():
        for mark in found:
            counts[mark] += 1
    return counts
