"""Schedule semantics: every form, Draco fields, DST days (Debian cron's rules), bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reqcron import ScheduleError, Task
from reqcron.schedule.forms import Cron, Every, fields_to_cron

AMS = ZoneInfo("Europe/Amsterdam")
NY = ZoneInfo("America/New_York")


def runs(schedule: Cron | Every, start: datetime, end: datetime) -> list[datetime]:
    """Every run of ``schedule`` in (start, end], as UTC datetimes."""
    out = []
    moment = start
    while (moment := schedule.next_run(moment)) is not None and moment <= end:
        out.append(moment.astimezone(UTC))
    return out


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "cron"),
    [
        ({"hour": 4}, "0 4 * * *"),
        ({"minute": 15}, "15 * * * *"),
        ({"dow": 0}, "0 0 * * 1"),  # Python's Monday
        ({"dow": 6}, "0 0 * * 0"),  # Python's Sunday is cron's 0
        ({}, "* * * * *"),
        ({"hour": (0, 4, 8, 12, 16, 20)}, "0 0,4,8,12,16,20 * * *"),
        ({"month": 1}, "0 0 1 1 *"),
        ({"day": 15}, "0 0 15 * *"),
        ({"minute": 30, "dow": [0, 2]}, "30 * * * 1,3"),
    ],
)
def test_draco_fields_default_finer_ones_to_their_first_value(fields, cron):
    assert fields_to_cron(**fields) == cron


def test_draco_example_runs_every_four_hours():
    class MyTask(Task):
        timezone = "UTC"

        def __init__(self):
            Task.__init__(self)
            self.schedule(hour=(0, 4, 8, 12, 16, 20))

    task = MyTask()
    assert task.next_run(utc(2026, 5, 1, 3, 59)) == utc(2026, 5, 1, 4, 0)
    assert task.next_run(utc(2026, 5, 1, 4, 0)) == utc(2026, 5, 1, 8, 0)
    assert task.next_run(utc(2026, 5, 1, 22, 0)) == utc(2026, 5, 2, 0, 0)


def test_draco_dow_counts_monday_as_zero():
    class Weekly(Task):
        timezone = "UTC"

        def __init__(self):
            Task.__init__(self)
            self.schedule(dow=0, hour=6)

    nxt = Weekly().next_run(utc(2026, 11, 23, 7, 0))  # a Monday, after 06:00
    assert nxt == utc(2026, 11, 30, 6, 0)
    assert nxt.weekday() == 0


def test_cron_aliases_and_weekday_list():
    class Newsletter(Task):
        cron = "30 9 * * 1,3"
        timezone = "UTC"

    class Hourly(Task):
        cron = "@hourly"
        timezone = "UTC"

    assert Newsletter().next_run(utc(2026, 11, 23, 10, 0)) == utc(2026, 11, 25, 9, 30)
    assert Hourly().next_run(utc(2026, 11, 23, 10, 0)) == utc(2026, 11, 23, 11, 0)


def test_next_run_is_strictly_after():
    class Daily(Task):
        cron = "0 3 * * *"
        timezone = "UTC"

    assert Daily().next_run(utc(2026, 1, 1, 3, 0)) == utc(2026, 1, 2, 3, 0)


def test_every_counts_from_its_anchor():
    anchor = utc(2026, 1, 1, 0, 0, 10)
    every = Every(timedelta(seconds=30), anchor)
    assert every.next_run(utc(2026, 1, 1)) == anchor
    assert every.next_run(anchor) == anchor + timedelta(seconds=30)
    assert every.next_run(utc(2026, 1, 1, 1, 0, 0)) == utc(2026, 1, 1, 1, 0, 10)


def test_at_runs_once_then_never():
    class Once(Task):
        at = utc(2026, 12, 24, 18, 0)

    task = Once()
    assert task.next_run(utc(2026, 12, 1)) == utc(2026, 12, 24, 18, 0)
    assert task.next_run(utc(2026, 12, 24, 18, 0)) is None


def test_no_schedule_means_on_demand_only():
    class Reindex(Task):
        pass

    assert Reindex().next_run(utc(2026, 1, 1)) is None


def test_next_run_rejects_naive_datetimes():
    class T(Task):
        cron = "* * * * *"

    with pytest.raises(ValueError, match="aware"):
        T().next_run(datetime(2026, 1, 1))


# Europe/Amsterdam 2026: clocks go 02:00 -> 03:00 on 29 March, 03:00 -> 02:00 on 25 October.
# America/New_York 2026: 02:00 -> 03:00 on 8 March, 02:00 -> 01:00 on 1 November.


def test_fixed_time_in_skipped_hour_runs_right_after_the_change():
    daily = Cron("30 2 * * *", AMS)
    got = runs(daily, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    # 28 Mar 02:30 was before the window; 29 Mar: 03:00 CEST = 01:00 UTC; 30 Mar 02:30 CEST.
    assert got == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]


def test_fixed_time_in_repeated_hour_runs_once_in_the_first_pass():
    daily = Cron("30 2 * * *", AMS)
    got = runs(daily, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    # 25 Oct 02:30 CEST (+02:00) = 00:30 UTC, not again at 02:30 CET; 26 Oct 02:30 CET.
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        (AMS, (2026, 3, 29)),
        (AMS, (2026, 10, 25)),
        (NY, (2026, 3, 8)),
        (NY, (2026, 11, 1)),
    ],
)
@pytest.mark.parametrize("expr", ["0 2 * * *", "30 2 * * *", "30 1 * * *", "0 3 * * *"])
def test_a_daily_job_runs_exactly_once_on_transition_days(zone, day, expr):
    start = datetime(*day, tzinfo=zone).astimezone(UTC) - timedelta(seconds=1)
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC) - timedelta(seconds=1)
    local_days = [r.astimezone(zone).date() for r in runs(Cron(expr, zone), start, end)]
    assert local_days == [datetime(*day).date()]


def test_wildcard_hour_runs_in_both_passes_of_a_repeated_hour():
    hourly = Cron("0 * * * *", NY)
    got = runs(hourly, utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 8, 30))
    # 01:00 EDT (05:00Z), 01:00 EST (06:00Z), 02:00 EST (07:00Z), 03:00 EST (08:00Z)
    assert got == [
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 7),
        utc(2026, 11, 1, 8),
    ]


def test_wildcard_minute_skips_times_in_a_skipped_hour():
    every_minute_at_two = Cron("* 2 * * *", AMS)
    got = runs(every_minute_at_two, utc(2026, 3, 28, 23), utc(2026, 3, 29, 6))
    assert got == []  # 02:xx never happens that day
    quarter = Cron("*/15 1-3 * * *", NY)
    got = runs(quarter, utc(2026, 11, 1, 4, 59), utc(2026, 11, 1, 8, 59))
    local = [g.astimezone(NY).strftime("%H:%M%z") for g in got]
    assert local[:8] == [
        "01:00-0400",
        "01:15-0400",
        "01:30-0400",
        "01:45-0400",
        "01:00-0500",
        "01:15-0500",
        "01:30-0500",
        "01:45-0500",
    ]
    assert len(got) == 16  # both passes of 01:xx, then 02:xx and 03:xx once


def test_every_counts_real_seconds_across_a_transition():
    hourly = Every(timedelta(hours=1), datetime(2026, 10, 24, 0, 0, tzinfo=AMS))
    start = datetime(2026, 10, 25, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    end = datetime(2026, 10, 26, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    assert len(runs(hourly, start, end)) == 25  # the day has 25 real hours


def test_latest_slot_coalesces_a_long_gap():
    cron = Cron("*/5 * * * *", ZoneInfo("UTC"))
    first = utc(2026, 1, 1, 0, 5)
    assert cron.latest_slot(first, utc(2026, 1, 11, 7, 33)) == utc(2026, 1, 11, 7, 30)
    every = Every(timedelta(seconds=7), utc(2026, 1, 1))
    assert every.latest_slot(utc(2026, 1, 1, 0, 0, 7), utc(2026, 1, 1, 0, 1)) == utc(
        2026, 1, 1, 0, 0, 56
    )


def test_monthly_latest_slot_looks_back_far_enough():
    cron = Cron("0 0 1 * *", ZoneInfo("UTC"))
    assert cron.latest_slot(utc(2025, 1, 1), utc(2026, 7, 20)) == utc(2026, 7, 1)


def make(attrs: dict, init=None) -> Task:
    cls = type("Broken", (Task,), dict(attrs, **({"__init__": init} if init else {})))
    task = cls()
    task.compiled_schedule(ZoneInfo("UTC"))
    return task


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"cron": "61 * * * *"}, "not valid"),
        ({"cron": "* * * *"}, "5 fields"),
        ({"cron": "0 0 * * * *"}, "5 fields"),
        ({"cron": "0 0 31 2 *"}, "never matches"),
        ({"cron": 5}, "must be a string"),
        ({"cron": "@reboot"}, "5 fields"),
        ({"cron": "0 * * * *", "every": 5}, "cron and every"),
        ({"every": 0}, "positive"),
        ({"every": -3}, "positive"),
        ({"at": datetime(2026, 1, 1)}, "naive"),
        ({"every": 5, "anchor": datetime(2026, 1, 1)}, "naive"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "0 * * * *", "timeout": "soon"}, "timeout"),
    ],
)
def test_invalid_schedules_raise_one_error_naming_the_task(attrs, message):
    with pytest.raises(ScheduleError, match=message) as info:
        make(attrs)
    assert "'Broken'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hour": 24}, "hour=24 is out of range 0..23"),
        ({"minute": -1}, "out of range"),
        ({"dow": 7}, "dow=7 is out of range 0..6"),
        ({"month": 13}, "out of range"),
        ({"hour": "4"}, "out of range"),
        ({"hour": 4, "cron": "0 4 * * *"}, "give one form"),
    ],
)
def test_invalid_schedule_calls_raise_in_init(kwargs, message):
    def init(self):
        Task.__init__(self)
        self.schedule(**kwargs)

    with pytest.raises(ScheduleError, match=message):
        make({}, init)


def test_schedule_call_and_class_attribute_together_is_an_error():
    def init(self):
        Task.__init__(self)
        self.schedule(hour=3)

    with pytest.raises(ScheduleError, match="schedule\\(\\) and cron"):
        make({"cron": "0 3 * * *"}, init)


def test_describe_reads_like_english():
    assert Cron("30 2 * * *", AMS).describe() == "every day at 02:30"
    assert Cron("*/5 * * * *", AMS).describe() == "every 5 minutes"
    assert Cron("15 * * * *", AMS).describe() == "every hour at :15"
    assert Cron("30 9 * * 1,3", AMS).describe() == "at 09:30 on Monday, Wednesday"
    assert Every(timedelta(seconds=30)).describe() == "every 30 seconds"
    assert Every(timedelta(hours=1)).describe() == "every hour"
