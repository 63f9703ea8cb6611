"""How times are shown, in one place: ISO 8601 with offset for machines, local text for people.

Every surface (commands, their JSON, the status page, metrics' labels and
the alerts' messages) shows a moment in the DOCROOT's zone, to the second.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from .records import now


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
