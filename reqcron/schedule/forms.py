"""Schedule forms and their next run times; the only module that imports croniter.

Daylight saving follows Debian cron: a cron schedule whose minute or hour
field is a wildcard runs by real elapsed time (both passes of a repeated
hour; skipped times are skipped); any other runs once per wall-clock time
(the first pass of a repeated hour; a time in a skipped hour runs right
after the change).  All comparisons are done in UTC, because Python compares
two datetimes of one zone by wall time and ignores ``fold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

# Draco-style fields, finest first, with their ranges.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("dow", 0, 6), ("month", 1, 12))
_LEVEL = {"minute": 0, "hour": 1, "day": 2, "dow": 2, "month": 3}
#: The most slots a catch-up run counts one by one.
COUNT_LIMIT = 10_000
_DOW_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Schedule:
    """When a task runs; subclasses answer ``next_run``."""

    kind = "none"

    def next_run(self, after: datetime) -> datetime | None:
        """Return the first slot strictly after the aware datetime ``after``."""
        return None

    def latest_slot(self, first: datetime, now: datetime) -> datetime:
        """Return the last slot in [first, now], where ``first`` is a slot <= now."""
        first, now = first.astimezone(UTC), now.astimezone(UTC)
        for window in (
            timedelta(hours=1),
            timedelta(days=1),
            timedelta(days=32),
            timedelta(days=400),
            timedelta(days=3660),
        ):
            lo = now - window
            if lo <= first:
                slot = first
            else:
                found = self.next_run(lo)
                if found is None or found > now:
                    continue
                slot = found
            while (nxt := self.next_run(slot)) is not None and nxt <= now:
                slot = nxt
            return slot
        return first

    def count(self, first: datetime, now: datetime) -> int:
        """Return how many slots lie in [first, now] (at least 1, at most COUNT_LIMIT)."""
        slots = 1
        slot: datetime | None = first
        while slots < COUNT_LIMIT and slot is not None:
            slot = self.next_run(slot)
            if slot is None or slot > now:
                break
            slots += 1
        return slots

    @property
    def signature(self) -> str:
        """A string that changes whenever the schedule's meaning does."""
        return self.kind

    def describe(self) -> str:
        """Describe the schedule for people."""
        return "on demand only"


class Never(Schedule):
    """No schedule: the task runs only on demand."""


class At(Schedule):
    """Once, at one moment."""

    kind = "at"

    def __init__(self, when: datetime):
        self.when = when

    def next_run(self, after: datetime) -> datetime | None:
        return self.when if self.when.astimezone(UTC) > after.astimezone(UTC) else None

    @property
    def signature(self) -> str:
        return f"at:{self.when.isoformat()}"

    def describe(self) -> str:
        return f"once at {self.when.isoformat(sep=' ', timespec='minutes')}"


class Every(Schedule):
    """A fixed interval of real elapsed time, counted from an anchor."""

    kind = "every"

    def __init__(self, interval: timedelta, anchor: datetime | None = None,
                 explicit: bool = True):
        self.interval = interval
        # In UTC: arithmetic on a zoned datetime would count wall-clock time.
        self.anchor = anchor.astimezone(UTC) if anchor is not None else None
        # An anchor the task gave (part of its signature), not one from the state.
        self.explicit = explicit and anchor is not None

    def with_anchor(self, anchor: datetime) -> Every:
        """Return this interval counted from ``anchor`` (the state's first-seen time)."""
        return Every(self.interval, anchor, explicit=False)

    def next_run(self, after: datetime) -> datetime | None:
        after = after.astimezone(UTC)
        if self.anchor is None:
            return after + self.interval
        if after < self.anchor and self.explicit:
            return self.anchor  # it starts there; a first-seen anchor counts both ways
        steps = math.floor((after - self.anchor) / self.interval) + 1
        return self.anchor + steps * self.interval

    def latest_slot(self, first: datetime, now: datetime) -> datetime:
        first, now = first.astimezone(UTC), now.astimezone(UTC)
        anchor = self.anchor or first
        steps = math.floor((now - anchor) / self.interval)
        return max(first, anchor + steps * self.interval)

    def count(self, first: datetime, now: datetime) -> int:
        if self.anchor is None:
            return 1
        return max(1, math.floor((now - first.astimezone(UTC)) / self.interval) + 1)

    @property
    def signature(self) -> str:
        # An anchor from the state is left out on purpose: a schedule only
        # "changes" when the user changes it.
        base = f"every:{self.interval.total_seconds()!r}"
        return f"{base}@{self.anchor.isoformat()}" if self.explicit and self.anchor else base

    def describe(self) -> str:
        return f"every {_duration(self.interval)}"


class Cron(Schedule):
    """A five-field cron expression in a time zone."""

    kind = "cron"

    def __init__(self, expr: str, zone: tzinfo):
        from croniter import croniter  # here only: it costs ~50 ms to import

        self.expr = _ALIASES.get(expr.strip(), expr.strip())
        self.zone = zone
        fields = self.expr.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron {expr!r} must have 5 fields (minute hour day month weekday) "
                "or be one of " + ", ".join(_ALIASES)
            )
        try:
            self._iter = croniter(self.expr, datetime(2000, 1, 1))
        except ValueError as exc:  # croniter's errors subclass ValueError
            raise ValueError(f"cron {expr!r} is not valid: {exc}") from None
        if not croniter.is_valid(self.expr, strict=True):
            raise ValueError(f"cron {expr!r} never matches a real date")
        self.wildcard = fields[0].startswith("*") or fields[1].startswith("*")

    def next_run(self, after: datetime) -> datetime | None:
        after_utc = after.astimezone(UTC)
        local = after_utc.astimezone(self.zone)
        # A repeated hour can map a later wall time to an earlier instant, so
        # look back and ahead by however much the offset changes near `after`.
        margin = _offset_swing(local, self.zone)
        self._iter.set_current(local.replace(tzinfo=None, fold=0) - margin, force=True)
        best: datetime | None = None
        best_naive: datetime | None = None
        while True:
            naive = self._iter.get_next(datetime)
            if best_naive is not None and naive - best_naive > margin:
                break
            for instant in self._instants(naive):
                if instant > after_utc and (best is None or instant < best):
                    best, best_naive = instant, naive
        assert best is not None
        return best.astimezone(self.zone)

    def _instants(self, naive: datetime) -> list[datetime]:
        """The UTC instants at which the wall time ``naive`` fires."""
        first = naive.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first.astimezone(self.zone).replace(tzinfo=None) == naive:  # a repeated hour
            return [first, second] if self.wildcard else [first]
        if self.wildcard:  # a skipped hour
            return []
        return [_transition(min(first, second), max(first, second), self.zone)]

    @property
    def signature(self) -> str:
        return f"cron:{self.expr}@{self.zone}"

    def describe(self) -> str:
        return describe_cron(self.expr)


def from_signature(signature: str | None, anchor: datetime | None = None) -> Schedule | None:
    """Rebuild a schedule from its ``signature``, or None when it cannot be.

    Processes that never import ``__tasks__.py`` (the web server's) know
    tasks by their signature alone.  ``anchor`` counts an ``every`` that has
    none of its own.
    """
    kind, _, rest = (signature or "").partition(":")
    try:
        if kind == "none":
            return Never()
        if kind == "cron":
            from .zones import zone_named

            expr, _, zone = rest.rpartition("@")
            return Cron(expr, zone_named(zone))
        if kind == "every":
            seconds, _, own = rest.partition("@")
            interval = timedelta(seconds=float(seconds))
            if own:
                return Every(interval, datetime.fromisoformat(own))
            return Every(interval, anchor, explicit=False) if anchor is not None else None
        if kind == "at":
            return At(datetime.fromisoformat(rest))
    except (ValueError, LookupError, OverflowError):
        pass
    return None


def _offset_swing(local: datetime, zone: tzinfo) -> timedelta:
    offsets = [(local + timedelta(days=d)).astimezone(zone).utcoffset() for d in (-1, 0, 1)]
    known = [o for o in offsets if o is not None]
    return max(known) - min(known) if known else timedelta(0)


def _transition(lo: datetime, hi: datetime, zone: tzinfo) -> datetime:
    """Return the first UTC instant in [lo, hi] whose offset differs from lo's."""
    before = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def fields_to_cron(
    minute: int | Iterable[int] | None = None,
    hour: int | Iterable[int] | None = None,
    dow: int | Iterable[int] | None = None,
    day: int | Iterable[int] | None = None,
    month: int | Iterable[int] | None = None,
) -> str:
    """Turn Draco-style fields into a cron expression.

    Fields finer than the finest one given default to their first value;
    coarser ones mean "every".  ``dow`` counts 0 = Monday, as Python does.
    """
    given: dict[str, Any] = {"minute": minute, "hour": hour, "day": day, "dow": dow, "month": month}
    given = {k: v for k, v in given.items() if v is not None}
    finest = min((_LEVEL[k] for k in given), default=None)
    parts: dict[str, str] = {}
    for name, low, high in _FIELDS:
        value = given.get(name)
        if value is None:
            # Only minute and hour default to their first value: a day of
            # month set beside a weekday would mean "either" in cron.
            fill = finest is not None and _LEVEL[name] < finest and name in ("minute", "hour")
            fill = fill or (name == "day" and finest == 3)
            parts[name] = str(low) if fill else "*"
            continue
        parts[name] = _cron_field(name, value, low, high, name == "dow")
    return " ".join(parts[k] for k in ("minute", "hour", "day", "month", "dow"))


def lists_to_cron(
    minutes: int | Iterable[int] | None = None,
    hours: int | Iterable[int] | None = None,
    days: int | Iterable[int] | None = None,
    months: int | Iterable[int] | None = None,
    days_of_week: int | Iterable[int] | None = None,
) -> str:
    """Turn autocron-style fields into a cron expression; a field left out means every value.

    ``days_of_week`` counts 0 = Monday, as Python and autocron do.
    """
    given = (  # in cron's order
        ("minutes", "minute", minutes),
        ("hours", "hour", hours),
        ("days", "day", days),
        ("months", "month", months),
        ("days_of_week", "dow", days_of_week),
    )
    ranges = {field: (low, high) for field, low, high in _FIELDS}
    return " ".join(
        "*" if value is None else _cron_field(keyword, value, *ranges[field], field == "dow")
        for keyword, field, value in given
    )


def _cron_field(name: str, value: int | Iterable[int], low: int, high: int, dow: bool) -> str:
    """Check one field's values against its range and write them the cron way."""
    # Anything but a list of ints is out of range: "4" is one wrong value, not two.
    values: list[Any] = [value]
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        values = list(value)
    if not values:
        raise ValueError(f"{name} is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"{name}={v!r} is out of range {low}..{high}")
    if dow:
        values = [(v + 1) % 7 for v in values]  # cron counts 0 = Sunday
    return ",".join(str(v) for v in sorted(set(values)))


def describe_cron(expr: str) -> str:
    """Describe the common cron shapes in words; fall back to the expression."""
    minute, hour, day, month, dow = expr.split()
    if not (minute.isdigit() or minute == "*" or minute.startswith("*/")):
        return f"cron {expr}"
    if month != "*" or (day != "*" and dow != "*"):
        return f"cron {expr}"
    when: str
    if minute == "*" and hour == "*":
        when = "every minute"
    elif minute.startswith("*/") and hour == "*":
        when = "every minute" if minute == "*/1" else f"every {minute[2:]} minutes"
    elif minute.isdigit() and hour == "*":
        when = f"every hour at :{int(minute):02d}"
    elif minute.isdigit() and all(h.isdigit() for h in hour.split(",")):
        times = ", ".join(f"{int(h):02d}:{int(minute):02d}" for h in hour.split(","))
        when = f"at {times}"
    else:
        return f"cron {expr}"
    if day != "*":
        return f"{when} on day {day} of the month" if when.startswith("at") else f"cron {expr}"
    if dow != "*":
        try:
            names = [_DOW_NAMES[(int(d) - 1) % 7] for d in dow.split(",")]
        except ValueError:
            return f"cron {expr}"
        return f"{when} on {', '.join(names)}" if when.startswith("at") else f"cron {expr}"
    return f"every day {when}" if when.startswith("at") else when


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}s" if n != 1 else unit
    return f"{seconds:g} seconds" if seconds != 1 else "second"
