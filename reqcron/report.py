"""What the CLI and the status page show: one summary of a DOCROOT, as plain data.

Both surfaces render these same dicts (the ``--json`` and ``?format=json``
shapes documented in the README), so they never disagree.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime, timedelta, tzinfo

from .engine.docroot import Docroot
from .marks import count, glance, marks, open_runs, running_long, starved
from .records import RAN, Record, Run, Status, now
from .schedule.forms import Cron, Every
from .schedule.zones import local_zone, same_zone, zone_name
from .times import iso

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .engine.pause import Pause

#: Runs per task in the status page's strip, and per page of its history.
STRIP_RUNS = 30
PAGE_SIZE = 50
#: Tasks per page of the status page's table.
TASKS_PAGE = 100


def crontab_due_line(doc: Docroot) -> str:
    """The one crontab line that starts every due task of ``doc`` each minute."""
    return f"* * * * * {shlex.quote(_command('reqcron'))} due {shlex.quote(str(doc.path))}"


def _command(name: str) -> str:
    """Absolute path of one of reqcron's commands beside this interpreter."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.access(candidate, os.X_OK) else name


def runtask_command() -> str:
    return _command("runtask")


def first_error_line(run: Run) -> str | None:
    return run.error.splitlines()[0] if run.error else None


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word boundary with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    space = cut.rfind(" ")
    if space > width // 2:  # else one long word: cutting inside it shows more
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def output_without_traceback(run: Run) -> str:
    """A run's output without the traceback the task process also printed into it.

    The child prints its traceback to stderr (for logs that only see output);
    shown beside the run's traceback, it would read twice.
    """
    output = run.output or ""
    printed = (run.traceback or "").split("\nStack when asked to stop:")[0].strip()
    if printed and printed in output:
        head, _, tail = output.rpartition(printed)
        output = head + tail.lstrip("\n")
    return output


def return_value(text: str | None) -> Any:
    """The value a run returned, decoded from the JSON it is stored as; a repr stays text."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:  # a repr (not JSON), or cut short by the cap
        return text


def _not_json(name: str) -> Any:
    # NaN and Infinity load in Python but would make the output invalid JSON.
    raise ValueError(name)


def run_dict(run: Run, zone: tzinfo, full: bool = False) -> dict[str, Any]:
    """A run as the documented JSON shape."""
    data: dict[str, Any] = {
        "id": run.id, "task": run.task, "trigger": run.trigger, "status": run.status,
        "slot": iso(run.slot, zone), "slots": run.slots, "lateness": run.lateness,
        "start": iso(run.start, zone), "end": iso(run.end, zone), "duration": run.duration,
        "exit_code": run.exit_code, "error": first_error_line(run),
        "return_value": return_value(run.return_value),
    }
    if run.call is not None:
        from .engine.stored_calls import call_dict

        data["call"] = call_dict(run)
        data["due"] = iso(run.due, zone)
    if full:
        data.update(output=run.output, traceback=run.traceback, full_error=run.error,
                    notified=run.notified, pid=run.pid)
    return data


class TasksWanted(Record):
    """Which tasks a page of the status page shows: page ``page`` (from 1) of those whose
    name holds ``filter`` (any case), ``size`` a page, tasks with marks first."""

    __slots__ = ("page", "filter", "size")

    def __init__(self, page: int = 1, filter: str | None = None, size: int = TASKS_PAGE):
        self.page = page
        self.filter = filter
        self.size = size


def summary(doc: Docroot, history: int = 0, recent: int = 0,
            tasks: TasksWanted | None = None) -> dict[str, Any]:
    """Every task with its schedule, next and last run and marks; load errors; where state is.

    While ``__tasks__.py`` is broken, its tasks are the last ones that loaded,
    each marked ``broken``, so users see what is being missed.  With
    ``recent``, each task also has its latest runs (newest first, in short).
    With ``tasks``, only that page of tasks, and ``tasks_page`` saying where it is.
    A task's runs are read only for the tasks shown, and only for those that ran.
    """
    current = now()
    zone = doc.zone
    catalog = doc.catalog()
    states = doc.states()
    doc.reap()
    pause = doc.paused(current)
    opened = open_runs(doc)
    stats = doc.run_stats()
    # The tasks with a run of their own that ran: only theirs is worth looking for.
    ran = {c.task for c in stats.counts if not c.call and c.status in RAN}
    names = sorted(catalog.tasks)
    paging = None
    if tasks is not None:
        marked = glance(doc, current, states, pause, opened, stats)
        names, paging = _page_of(names, marked, tasks)
    entries = []
    for name in names:
        info, state = catalog.tasks[name], states.get(name)
        runs = doc.recent_runs(name, recent) if recent else []
        # The task's own last run: its Task.delay calls are apart from its schedule.
        last = next((r for r in runs if r.status in RAN and r.call is None), None)
        if last is None and name in ran and len(runs) == recent:  # further back
            last = _last_ran(doc, name)
        enabled = state.enabled if state else info.enabled
        next_due = state.next_due if state and enabled else None
        hungry = starved(doc, name, state, current)
        running = opened.get(name, [])
        entries.append({
            "name": name,
            "schedule": info.describe,
            "kind": info.kind,
            "timezone": info.zone or str(zone),
            "enabled": enabled,
            "next_run": iso(next_due, zone),
            "running": any(r.status == Status.RUNNING for r in running),
            "pending": any(r.status == Status.PENDING for r in running),
            "last_run": run_dict(last, zone) if last else None,
            "marks": marks(enabled=enabled, broken=bool(catalog.error_of(name)),
                           last_status=last.status if last else None, starved=hungry,
                           paused=pause is not None and not info.even_when_paused,
                           running_long=running_long(info, running, current)),
            "error": catalog.error_of(name),
            "fix": crontab_due_line(doc) if hungry else None,
            "catch_up": info.catch_up,
            "between": info.between,
            "even_when_paused": info.even_when_paused,
        })
        if recent:
            entries[-1]["recent"] = [strip_dict(r, zone) for r in runs]
    data = {
        "docroot": str(doc.path),
        "state": doc.state_location,
        # The deferred calls waiting (for their time, or a process) and running now.
        "calls": doc.queue(),
        "timezone": str(zone),
        "now": iso(current, zone),
        # The site's pause (`reqcron pause`): since when and until when (None: until resumed).
        "paused": None if pause is None else {"since": iso(pause.since, zone),
                                              "until": iso(pause.until, zone)},
        "tasks": entries,
        "load_errors": [str(e) for e in doc.load_errors()],
        "warnings": doc.warnings(),
        "history": [run_dict(r, zone) for r in doc.recent_runs(None, history)] if history else [],
    }
    if paging is not None:
        data["tasks_page"] = paging
    return data


def _last_ran(doc: Docroot, name: str) -> Run | None:
    """The task's own latest run that ran, read back from the history (past its calls)."""
    for limit in (1, 50):  # mostly the first is its own; else look past its calls
        runs = doc.recent_runs(name, limit, tuple(RAN))
        own = next((r for r in runs if r.call is None), None)
        if own is not None or len(runs) < limit:
            return own
    return None


def _page_of(names: list[str], marked: dict[str, list[str]], wanted: TasksWanted
             ) -> tuple[list[str], dict[str, Any]]:
    """The names on the page ``wanted`` (those with marks first, each by name), and where
    the page is: its number (the last one, past the end), pages, counts of each mark."""
    needle = (wanted.filter or "").casefold()
    matching = sorted((n for n in names if needle in n.casefold()),
                      key=lambda n: (not marked[n], n))
    pages = max(1, -(-len(matching) // wanted.size))
    page = min(wanted.page, pages)
    return matching[(page - 1) * wanted.size:page * wanted.size], {
        "page": page, "pages": pages, "size": wanted.size, "filter": wanted.filter,
        "total": len(names), "matching": len(matching),
        "previous": page - 1 if page > 1 else None, "next": page + 1 if page < pages else None,
        "marks": count(marked),
    }


def strip_dict(run: Run, zone: tzinfo) -> dict[str, Any]:
    """A run in short, for the strip of a task's latest runs."""
    return {"id": run.id, "status": run.status, "start": iso(run.start or run.created, zone),
            "duration": run.duration, "slots": run.slots}


def history_page(doc: Docroot, task: str | None = None, *, before: int | None = None,
                 after: int | None = None, size: int = PAGE_SIZE
                 ) -> tuple[list[Run], int | None, int | None]:
    """One page of the history: its runs (newest first), and the cursors of the pages
    around it: ``before`` for the older one, ``after`` for the newer one (None: none).

    Cursors are run ids, not page numbers, so a page stays put while new runs
    arrive.  Raises TaskLookupError for a task that is unknown and has no runs.
    """
    runs = doc.history(task, size + 1, before=before, after=after)
    if after is not None:  # the extra run is the newest: another newer page follows
        more_newer, runs = len(runs) > size, runs[-size:]
        more_older = bool(runs) and bool(doc.recent_runs(task, 1, before=runs[-1].id))
    else:
        more_older, runs = len(runs) > size, runs[:size]
        more_newer = before is not None and bool(runs) and bool(
            doc.recent_runs(task, 1, after=runs[0].id))
    older = runs[-1].id if more_older and runs else None
    newer = runs[0].id if more_newer and runs else None
    return runs, older, newer


def explain(doc: Docroot, name: str, count: int, pause: Pause | None) -> list[dict[str, Any]]:
    """The next ``count`` runs of a task, each marking a daylight-saving change it crosses
    and whether the site's ``pause`` (``doc.paused()``, read by the caller) will skip it."""
    from .engine.catch_up import Window

    schedule = doc.schedule_of(name)
    info = doc.info(name)
    window = Window(info)  # slots outside `between` are not run: not shown
    if info.even_when_paused:
        pause = None
    zone = getattr(schedule, "zone", doc.zone)
    moment = datetime.now(UTC)
    offset = moment.astimezone(zone).utcoffset()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        nxt = window.next_after(schedule, moment)
        if nxt is None or not window.holds(nxt):
            break
        local_time = nxt.astimezone(zone)
        change = None
        if local_time.utcoffset() != offset:
            after = _offset(local_time.utcoffset())
            change = f"crosses a change from UTC{_offset(offset)} to UTC{after}"
            offset = local_time.utcoffset()
        out.append({"at": local_time.isoformat(timespec="seconds"),
                    "local": local_time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dst_change": change,
                    "paused": pause is not None and (pause.until is None
                                                     or nxt.timestamp() < pause.until)})
        moment = nxt
    return out


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta(0)).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def crontab_lines(doc: Docroot) -> list[str]:
    """System-crontab lines running the same schedule through ``runtask --if-due``.

    Each line is right when pasted as-is, in Debian's cron and cronie alike:
    no CRON_TZ (Debian ignores it).  A cron schedule in the system's zone
    fires at its own times; anything else (another zone, an interval, a
    single moment) fires every minute and ``runtask --if-due`` starts it
    only when its slot is due, so the DOCROOT's zone and DST rules decide.
    """
    runtask = shlex.quote(runtask_command())
    root = shlex.quote(str(doc.path))
    system_zone = zone_name(local_zone())
    lines = [f"# reqcron schedule of {doc.path} (generated by `reqcron crontab`)",
             f"# the system's zone is {system_zone}; run these as the web server's user"]
    for name, info in sorted(doc.catalog().tasks.items()):
        command = f"{runtask} --if-due {root} {shlex.quote(name)}"
        schedule = doc.schedule_of(name)
        if info.kind == "none":
            lines.append(f"# {name}: on demand only")
            continue
        if isinstance(schedule, Cron) and info.zone is not None and same_zone(info.zone,
                                                                              system_zone):
            lines.append(f"{schedule.expr} {command}")
            continue
        if isinstance(schedule, Cron):
            why = f"{info.describe} in {info.zone}: checked each minute, run at its times"
        elif isinstance(schedule, Every) and schedule.interval.total_seconds() < 60:
            why = (f"{info.describe}: cron fires at most once a minute, so this line runs it "
                   "at most once a minute (requests keep its interval)")
        else:
            why = f"{info.describe}: checked each minute, run when due"
        lines.append(f"# {name}: {why}")
        lines.append(f"* * * * * {command}")
    lines.append("# or, instead of all the above, one line that starts whatever is due:")
    lines.append(f"# {crontab_due_line(doc)}")
    return lines
