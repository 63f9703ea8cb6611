"""What the CLI and the status page show: one summary of a DOCROOT, as plain data.

Both surfaces render these same dicts (the ``--json`` and ``?format=json``
shapes documented in the README), so they never disagree.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC, datetime, timedelta, tzinfo

from .docroot import Docroot
from .records import Run, Status, now
from .schedule import Cron, Every
from .zones import local_zone, zone_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .records import TaskState
    from .schedule import Schedule

#: A task is starved when its first unclaimed slot is older than this many
#: periods (and at least STARVED_MIN seconds): nothing triggered it.
STARVED_MIN = 120.0
FAILING = (Status.FAILED, Status.TIMEOUT, Status.LOST, Status.MISSED)


def iso(ts: float | None, zone: tzinfo) -> str | None:
    """ISO 8601 with offset, in ``zone``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).astimezone(zone).isoformat(timespec="seconds")


def local(ts: float | None, zone: tzinfo) -> str:
    """A local time for people: '2026-11-23 14:30:05 CET'."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def relative(ts: float | None, at: float | None = None) -> str:
    """'in 4 min', '3 h ago', 'now'."""
    if ts is None:
        return ""
    delta = ts - (now() if at is None else at)
    size = abs(delta)
    if size < 1:
        return "now"
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if size >= seconds:
            text = f"{int(size // seconds)} {unit}"
            break
    return f"in {text}" if delta > 0 else f"{text} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


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


def run_dict(run: Run, zone: tzinfo, full: bool = False) -> dict[str, Any]:
    """A run as the documented JSON shape."""
    data: dict[str, Any] = {
        "id": run.id, "task": run.task, "trigger": run.trigger, "status": run.status,
        "slot": iso(run.slot, zone), "slots": run.slots, "lateness": run.lateness,
        "start": iso(run.start, zone), "end": iso(run.end, zone), "duration": run.duration,
        "exit_code": run.exit_code, "error": first_error_line(run),
        "return_value": run.return_value,
    }
    if run.call is not None:
        from .calls import call_dict

        data["call"] = call_dict(run)
        data["due"] = iso(run.due, zone)
    if full:
        data.update(output=run.output, traceback=run.traceback, full_error=run.error,
                    notified=run.notified, pid=run.pid)
    return data


def is_starved(schedule: Schedule, state: TaskState | None, at: float) -> bool:
    """Whether the task's first unclaimed slot passed long ago: nothing triggers it."""
    if state is None or not state.enabled or state.next_due is None:
        return False
    following = schedule.next_run(datetime.fromtimestamp(state.next_due, UTC))
    period = (following.timestamp() - state.next_due) if following else 0.0
    return at - state.next_due > max(2 * period, STARVED_MIN)


def summary(doc: Docroot, history: int = 0) -> dict[str, Any]:
    """Every task with its schedule, next and last run and marks; load errors; where state is.

    While ``__tasks__.py`` is broken, its tasks are the last ones that loaded,
    each marked ``broken``, so users see what is being missed.
    """
    current = now()
    zone = doc.zone
    catalog = doc.catalog()
    states = doc.states()
    doc.reap()
    entries = []
    for name in sorted(catalog.tasks):
        info, state = catalog.tasks[name], states.get(name)
        schedule = doc.schedule_of(name, state)
        runs = doc.recent_runs(name, 20)
        last = next((r for r in runs if r.status not in (Status.PENDING, Status.RUNNING)
                     and (r.status != Status.SKIPPED or r.error != "disabled")), None)
        enabled = state.enabled if state else info.enabled
        next_due = state.next_due if state and enabled else None
        starved = is_starved(schedule, state, current)
        marks = []
        if not enabled:
            marks.append("disabled")
        if catalog.error_of(name):
            marks.append("broken")
        if last is not None and last.status in FAILING:
            marks.append("failing")
        if starved:
            marks.append("starved")
        entries.append({
            "name": name,
            "schedule": info.describe,
            "kind": info.kind,
            "timezone": info.zone or str(zone),
            "enabled": enabled,
            "next_run": iso(next_due, zone),
            "running": any(r.status == Status.RUNNING for r in runs),
            "pending": any(r.status == Status.PENDING for r in runs),
            "last_run": run_dict(last, zone) if last else None,
            "marks": marks,
            "error": catalog.error_of(name),
            "fix": crontab_due_line(doc) if starved else None,
        })
    return {
        "docroot": str(doc.path),
        "state": doc.state_location,
        "timezone": str(zone),
        "now": iso(current, zone),
        "tasks": entries,
        "load_errors": [str(e) for e in doc.load_errors()],
        "warnings": doc.warnings(),
        "history": [run_dict(r, zone) for r in doc.recent_runs(None, history)] if history else [],
    }


def explain(doc: Docroot, name: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` runs of a task, each marking a daylight-saving change it crosses."""
    schedule = doc.schedule_of(name)
    zone = getattr(schedule, "zone", doc.zone)
    moment = datetime.now(UTC)
    offset = moment.astimezone(zone).utcoffset()
    out = []
    for _ in range(count):
        nxt = schedule.next_run(moment)
        if nxt is None:
            break
        local_time = nxt.astimezone(zone)
        change = None
        if local_time.utcoffset() != offset:
            after = _offset(local_time.utcoffset())
            change = f"crosses a change from UTC{_offset(offset)} to UTC{after}"
            offset = local_time.utcoffset()
        out.append({"at": local_time.isoformat(timespec="seconds"),
                    "local": local_time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dst_change": change})
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
        if isinstance(schedule, Cron) and info.zone == system_zone:
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
