"""What the CLI and the status page show: one summary of a DOCROOT, as plain data.

Both surfaces render these same dicts (the ``--json`` and ``?format=json``
shapes documented in the README), so they never disagree.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC, datetime, timedelta, tzinfo

from .config import local_zone
from .docroot import Docroot
from .schedule import Cron, Every
from .store import Run, Status, now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    if full:
        data.update(output=run.output, traceback=run.traceback, full_error=run.error,
                    pid=run.pid)
    return data


def summary(doc: Docroot, history: int = 0) -> dict[str, Any]:
    """Every task with its schedule, next and last run and marks; load errors; where state is."""
    current = now()
    zone = doc.settings.zone
    tasks = doc.tasks()
    states = doc.states(current)
    doc.reap()
    last_runs: dict[str, Run | None] = {}
    entries = []
    for name in sorted(tasks):
        task, state = tasks[name], states.get(name)
        schedule = doc.schedule_of(task, state)
        runs = [r for r in doc.store.runs(name, 20) if r.status != Status.PENDING]
        last = next((r for r in runs if r.status != Status.SKIPPED or r.error != "disabled"),
                    None)
        last_runs[name] = last
        enabled = state.enabled if state else type(task).enabled
        next_due = state.next_due if state and enabled else None
        starved = False
        if state and enabled and state.next_due is not None:
            following = schedule.next_run(datetime.fromtimestamp(state.next_due, UTC))
            period = (following.timestamp() - state.next_due) if following else 0.0
            starved = current - state.next_due > max(2 * period, STARVED_MIN)
        marks = []
        if not enabled:
            marks.append("disabled")
        if last is not None and last.status in FAILING:
            marks.append("failing")
        if starved:
            marks.append("starved")
        entries.append({
            "name": name,
            "schedule": schedule.describe(),
            "kind": schedule.kind,
            "timezone": str(getattr(schedule, "zone", zone)),
            "enabled": enabled,
            "next_run": iso(next_due, zone),
            "running": any(r.status == Status.RUNNING for r in runs),
            "last_run": run_dict(last, zone) if last else None,
            "marks": marks,
            "fix": crontab_due_line(doc) if starved else None,
        })
    return {
        "docroot": str(doc.path),
        "state": str(doc.settings.state_dir),
        "timezone": str(zone),
        "now": iso(current, zone),
        "tasks": entries,
        "load_errors": [str(e) for e in doc.load_errors()],
        "history": [run_dict(r, zone) for r in doc.store.runs(None, history)] if history else [],
    }


def explain(doc: Docroot, name: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` runs of a task, each marking a daylight-saving change it crosses."""
    task = doc.task(name)
    state = doc.states().get(name)
    schedule = doc.schedule_of(task, state)
    zone = getattr(schedule, "zone", doc.settings.zone)
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
    """System-crontab lines running the same schedule through runtask."""
    runtask = shlex.quote(runtask_command())
    root = shlex.quote(str(doc.path))
    system_zone = str(local_zone())
    lines = [f"# reqcron schedule of {doc.path} (generated by `reqcron crontab`)"]
    current_zone = system_zone
    for name, task in sorted(doc.tasks().items()):
        schedule = doc.schedule_of(task)
        if isinstance(schedule, Cron):
            zone = str(schedule.zone)
            if zone != current_zone:  # CRON_TZ holds for the lines after it
                lines.append(f"CRON_TZ={zone}")
                current_zone = zone
            lines.append(f"{schedule.expr} {runtask} --if-due {root} {shlex.quote(name)}")
        elif isinstance(schedule, Every):
            lines.append(f"# {name}: {schedule.describe()} cannot be written as a cron line; "
                         "the `reqcron due` line below covers it (to the minute)")
        elif schedule.kind == "at":
            lines.append(f"# {name}: {schedule.describe()} is not a cron schedule; "
                         "the `reqcron due` line below covers it")
        else:
            lines.append(f"# {name}: on demand only")
    if current_zone != system_zone:
        lines.append(f"CRON_TZ={system_zone}")
    lines.append("# or, instead of all the above, one line that starts whatever is due:")
    lines.append(f"# {crontab_due_line(doc)}")
    return lines
