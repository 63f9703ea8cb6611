"""``between = "HH:MM-HH:MM"``: a daily window of wall-clock time, which may wrap midnight.

The start is in the window, the end is not: ``"08:00-18:00"`` holds 08:00
and 17:59, not 18:00; ``"22:00-06:00"`` holds 23:30 and 05:59.  A slot is
judged by its own wall-clock time in the task's zone, so on a night the
clocks change a window holds the wall times it names, whatever their UTC.
"""

from __future__ import annotations

from datetime import datetime, tzinfo


def parse_between(text: object) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` -> (start, end) in minutes after midnight; ValueError saying why."""
    if not isinstance(text, str):
        raise ValueError("between must be a string such as \"08:00-18:00\"")
    parts = text.replace(" ", "").split("-")
    if len(parts) != 2:
        raise ValueError(f"between must look like \"08:00-18:00\", not {text!r}")
    start, end = (_minutes(p, text) for p in parts)
    if start == end:
        raise ValueError(f"between {text!r} is empty: its start and end are the same")
    return start, end


def _minutes(part: str, text: str) -> int:
    hours, colon, minutes = part.partition(":")
    if (not colon or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2
            or len(hours) > 2):
        raise ValueError(f"between must look like \"08:00-18:00\", not {text!r}")
    h, m = int(hours), int(minutes)
    if h == 24 and m == 0:
        return 24 * 60
    if h > 23 or m > 59:
        raise ValueError(f"between {text!r} names a time that is not on a clock")
    return h * 60 + m


def within(moment: datetime, window: tuple[int, int], zone: tzinfo) -> bool:
    """Whether the aware ``moment`` falls in ``window`` (parse_between's) in ``zone``."""
    local = moment.astimezone(zone)
    minute = local.hour * 60 + local.minute
    start, end = window
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight
