"""Time semantics (issue 21): self.slot, catch_up, between, when(), pause, replay.

Logic is driven with fixed instants (``due(at=...)``) and claimed runs run by
the real ``runtask --run-id``; each feature also has a run started by
requests through the middleware and by ``reqcron due``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from conftest import (
    STATUS_TOKEN,
    drive,
    hello,
    read_history,
    reqcron_cmd,
    request,
    runtask,
    the_app,
    wait_for,
)

from reqcron import Docroot

T0 = datetime(2027, 11, 23, 12, 0, 30, tzinfo=UTC).timestamp()  # 13:00:30 in Amsterdam

SLOT_TASK = """
from reqcron import Task

class Report(Task):
    cron = "{cron}"
    timezone = "Europe/Amsterdam"
    catch_up = "{catch_up}"
    {extra}

    def run(self):
        return {{"slot": self.slot and self.slot.isoformat(), "slots": self.slots,
                 "zone": self.slot and self.slot.tzinfo.key}}
"""


def slot_task(cron: str = "*/5 * * * *", catch_up: str = "one", extra: str = "") -> str:
    return SLOT_TASK.format(cron=cron, catch_up=catch_up, extra=extra)


def run_claim(root, claim) -> dict:
    """Run a claimed run with the real runtask; return what run() returned."""
    done = runtask("--run-id", str(claim.run_id), str(root), claim.task)
    assert done.returncode == 0, done.stderr
    with Docroot(root) as doc:
        run = doc.get_run(claim.run_id)
    assert run.status == "ok", run
    return json.loads(run.return_value)


def statuses(doc: Docroot, name: str) -> list[tuple[str, float | None, int, str | None]]:
    """(status, slot, slots, error) of every run of ``name``, oldest first."""
    return [(r.status, r.slot, r.slots, r.error) for r in reversed(doc.history(name, 500))]


# -- self.slot and self.slots ------------------------------------------------------


def test_a_coalesced_run_sees_its_latest_slot_in_the_tasks_zone_and_how_many_it_stands_for(
        make_site):
    root = make_site(slot_task())
    with Docroot(root) as doc:
        assert doc.due(at=T0) == []  # first seen: next slot 12:05 UTC
        (claim,) = doc.due(at=T0 + 16 * 60)  # 12:05, 12:10 and 12:15 passed
    got = run_claim(root, claim)
    assert got == {"slot": "2027-11-23T13:15:00+01:00", "slots": 3, "zone": "Europe/Amsterdam"}


def test_an_on_demand_run_has_no_slot(make_docroot):
    root = make_docroot(slot_task())
    done = runtask(root, "Report")
    assert done.returncode == 0, done.stderr
    (run,) = read_history(root, "Report")
    assert json.loads(run.return_value) == {"slot": None, "slots": 1, "zone": None}


EVERY_SLOT = """
from datetime import timedelta
from reqcron import Task

class Beat(Task):
    every = timedelta(seconds=1)

    def run(self):
        return [self.slot.timestamp(), self.slots, str(self.slot.tzinfo)]
"""


def test_runs_started_by_requests_and_by_reqcron_due_see_their_slot(make_site, middleware):
    root = make_site(EVERY_SLOT, '[reqcron]\ntimezone = "Asia/Tokyo"\n')
    app = middleware(hello, root)

    def ran(trigger):
        return [r for r in read_history(root, "Beat") if r.trigger == trigger
                and r.status == "ok"]

    (run, *_) = drive(app, lambda: ran("request"), message="a run started by a request")
    assert json.loads(run.return_value) == [run.slot, run.slots, "Asia/Tokyo"]
    app.close()
    wait_for(lambda: (reqcron_cmd("due", str(root), "--wait").returncode == 0
                      and ran("due")), timeout=15, interval=0.3, message="a run by reqcron due")
    run = ran("due")[0]  # standing for the seconds since the middleware closed, coalesced
    assert json.loads(run.return_value) == [run.slot, run.slots, "Asia/Tokyo"]


# -- catch_up ----------------------------------------------------------------------


def test_catch_up_all_runs_each_missed_slot_in_order_with_its_own_slot(make_site):
    root = make_site(slot_task(catch_up="all"))
    with Docroot(root) as doc:
        doc.due(at=T0)
        seen = []
        at = T0 + 16 * 60
        for _ in range(3):
            (claim,) = doc.due(at=at)
            assert doc.due(at=at + 1) == []  # the next waits for this run to end
            seen.append(run_claim(root, claim))
            at += 2
        assert doc.due(at=at) == []  # all three ran; the next slot is 12:20
        assert doc.states()["Report"].next_due == T0 + 20 * 60 - 30
    assert [s["slot"] for s in seen] == ["2027-11-23T13:05:00+01:00",
                                         "2027-11-23T13:10:00+01:00",
                                         "2027-11-23T13:15:00+01:00"]
    assert {s["slots"] for s in seen} == {1}


def test_catch_up_all_runs_at_most_history_slots_and_records_the_older_ones_missed(
        make_site):
    root = make_site(slot_task(catch_up="all"), "[reqcron]\nhistory = 2\n")
    with Docroot(root) as doc:
        doc.due(at=T0)
        (claim,) = doc.due(at=T0 + 26 * 60)  # 12:05 … 12:25 passed: five slots
        missed = doc.history("Report")[-1]
        assert (missed.status, missed.slots, missed.slot) == ("missed", 3, T0 + 15 * 60 - 30)
        assert "history (2)" in missed.error
        assert run_claim(root, claim)["slot"] == "2027-11-23T13:20:00+01:00"


def test_catch_up_none_records_missed_slots_and_waits_for_the_next(make_site):
    root = make_site(slot_task(catch_up="none"))
    with Docroot(root) as doc:
        doc.due(at=T0)
        assert doc.due(at=T0 + 16 * 60) == []  # 12:15 found 90 s late: past one minute
        ((status, slot, slots, error),) = statuses(doc, "Report")
        assert (status, slot, slots) == ("missed", T0 + 15 * 60 - 30, 3)
        assert "catch_up = 'none'" in error
        assert doc.states()["Report"].next_due == T0 + 20 * 60 - 30
        (claim,) = doc.due(at=T0 + 20 * 60)  # 12:20, found 30 s late: on time
        assert run_claim(root, claim) == {"slot": "2027-11-23T13:20:00+01:00", "slots": 1,
                                          "zone": "Europe/Amsterdam"}


def test_catch_up_none_runs_the_latest_slot_found_in_time_and_records_the_others(make_site):
    root = make_site(slot_task(catch_up="none"))
    with Docroot(root) as doc:
        doc.due(at=T0)
        (claim,) = doc.due(at=T0 + 15 * 60)  # 12:15 found 30 s late; 12:05, 12:10 missed
        assert statuses(doc, "Report")[0][:3] == ("missed", T0 + 10 * 60 - 30, 2)
        assert run_claim(root, claim)["slots"] == 1


def test_a_bad_catch_up_is_that_tasks_load_error(make_docroot):
    root = make_docroot(slot_task(catch_up="some") + "\nclass Other(Task):\n    cron = '@daily'\n")
    with Docroot(root) as doc:
        (error,) = doc.load_errors()
        assert error.task == "Report" and "catch_up must be one of" in error.message
        assert "Other" in doc.catalog().tasks


# -- between -----------------------------------------------------------------------


def test_slots_outside_between_are_neither_run_nor_recorded(make_site):
    # Hourly in Amsterdam, between 22:00 and 02:00 (wrapping midnight).
    root = make_site(slot_task(cron="0 * * * *", extra='between = "22:00-02:00"'))
    day = datetime(2027, 11, 23, 11, 0, 30, tzinfo=UTC).timestamp()  # 12:00:30 Amsterdam
    with Docroot(root) as doc:
        doc.due(at=day)
        ran = []
        for hour in range(1, 16):  # 13:00 … 03:00 Amsterdam, one tick after each slot
            for claim in doc.due(at=day + hour * 3600):
                ran.append(run_claim(root, claim)["slot"])
        assert ran == ["2027-11-23T22:00:00+01:00", "2027-11-23T23:00:00+01:00",
                       "2027-11-24T00:00:00+01:00", "2027-11-24T01:00:00+01:00"]
        assert [s[0] for s in statuses(doc, "Report")] == ["ok"] * 4


def test_a_window_across_the_spring_forward_night_keeps_its_wall_times(make_docroot):
    # Europe/Amsterdam, 2026-03-29: 02:00 CET becomes 03:00 CEST.  Every 30 minutes
    # between 01:00 and 04:00: 01:00, 01:30, (02:00 and 02:30 do not exist), 03:00, 03:30.
    root = make_docroot(slot_task(cron="*/30 * * * *", extra='between = "01:00-04:00"'))
    start = datetime(2026, 3, 28, 23, 0, 30, tzinfo=UTC).timestamp()  # 00:00:30 CET
    with Docroot(root) as doc:
        doc.due(at=start)
        ran = [run_claim(root, c)["slot"] for step in range(1, 12)
               for c in doc.due(at=start + step * 1800)]
    assert ran == ["2026-03-29T01:00:00+01:00", "2026-03-29T01:30:00+01:00",
                   "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]


def test_catch_up_all_across_the_fall_back_night_runs_each_real_slot_once(make_docroot):
    # Europe/Amsterdam, 2026-10-25: 03:00 CEST becomes 02:00 CET; an hourly wildcard
    # schedule runs by real time: 02:00 CEST, 02:00 CET, 03:00 CET all pass.
    root = make_docroot(slot_task(cron="0 * * * *", catch_up="all"))
    start = datetime(2026, 10, 24, 23, 0, 30, tzinfo=UTC).timestamp()  # 01:00:30 CEST
    with Docroot(root) as doc:
        doc.due(at=start)
        at, ran = start + 3 * 3600, []
        while claims := doc.due(at=at):
            ran += [run_claim(root, c)["slot"] for c in claims]
            at += 1
    assert ran == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
                   "2026-10-25T03:00:00+01:00"]


def test_a_bad_between_is_that_tasks_load_error(make_docroot):
    root = make_docroot(slot_task(extra='between = "8-18"'))
    with Docroot(root) as doc:
        (error,) = doc.load_errors()
        assert error.task == "Report" and "08:00-18:00" in error.message


# -- when() ------------------------------------------------------------------------

WHEN_TASK = """
from datetime import timedelta
from pathlib import Path
from reqcron import Task

class Gated(Task):
    every = timedelta(seconds=1)

    def when(self):
        return (self.docroot / "go").exists()

    def run(self):
        return "ran"
"""


def test_when_saying_no_records_skipped_and_run_is_not_called(make_site, middleware):
    root = make_site(WHEN_TASK)
    app = middleware(hello, root)
    (run, *_) = drive(app, lambda: read_history(root, "Gated"), message="a request's run")
    wait_for(lambda: read_history(root, "Gated")[-1].status not in ("pending", "running"))
    first = read_history(root, "Gated")[-1]
    assert (first.status, first.error, first.return_value, first.trigger) == (
        "skipped", "when() said no", None, "request")
    (root / "go").write_text("")
    drive(app, lambda: any(r.status == "ok" and r.return_value == '"ran"'
                           for r in read_history(root, "Gated")), message="a run after yes")
    app.close()
    (root / "go").unlink()
    done = runtask(root, "Gated")
    assert done.returncode == 75
    assert read_history(root, "Gated", limit=1)[0].error == "when() said no"


# -- pause ------------------------------------------------------------------------

PAUSE_TASKS = """
from reqcron import Task

class Plain(Task):
    cron = "* * * * *"

class Vital(Task):
    cron = "* * * * *"
    even_when_paused = True
"""


def test_a_pause_skips_every_slot_but_even_when_paused_ones_and_lifts_at_its_end(make_site):
    root = make_site(PAUSE_TASKS)
    with Docroot(root) as doc, Docroot(root) as other_host:
        doc.due(at=T0)
        doc.pause(until=T0 + 150, at=T0)
        claims = other_host.due(at=T0 + 31)  # another process sees the pause
        assert [c.task for c in claims] == ["Vital"]
        assert statuses(doc, "Plain") == [("skipped", T0 + 30, 1, "paused")]
        other_host.due(at=T0 + 91)
        assert statuses(doc, "Plain") == [("skipped", T0 + 90, 2, "paused")]  # one row
        assert [c.task for c in doc.due(at=T0 + 151)] == ["Plain", "Vital"]  # lifted
        assert doc.paused(at=T0 + 151) is None


def test_reqcron_pause_and_resume_hold_for_requests_runtask_and_list(make_site, middleware):
    root = make_site(PAUSE_TASKS.replace('cron = "* * * * *"', "every = 1"))
    paused = reqcron_cmd("pause", str(root), "--until", "2999-01-01T00:00:00+00:00")
    assert paused.returncode == 0, paused.stderr
    listed = reqcron_cmd("list", str(root), "--json")
    data = json.loads(listed.stdout)
    assert data["paused"]["until"].startswith("2999-01-01")
    assert {t["name"]: t["marks"] for t in data["tasks"]} == {"Plain": ["paused"], "Vital": []}
    assert "PAUSED since" in reqcron_cmd("list", str(root)).stdout
    assert listed.returncode == 0
    refused = runtask(root, "Plain")
    assert refused.returncode == 75 and "paused" in refused.stderr
    app = middleware(hello, root)
    # The slots requests claim are recorded skipped (folded into runtask's row above).
    drive(app, lambda: [r for r in read_history(root, "Plain") if r.error == "paused"
                        and r.slot is not None] and
          [r for r in read_history(root, "Vital") if r.status == "ok"],
          message="Plain skipped as paused and Vital run")
    assert not [r for r in read_history(root, "Plain") if r.status in ("ok", "running")]
    assert reqcron_cmd("resume", str(root)).returncode == 0
    drive(app, lambda: [r for r in read_history(root, "Plain") if r.status == "ok"],
          message="Plain running again after resume")
    assert json.loads(reqcron_cmd("list", str(root), "--json").stdout)["paused"] is None


def test_pause_refuses_a_time_without_offset_or_in_the_past(make_docroot):
    root = make_docroot(PAUSE_TASKS)
    naive = reqcron_cmd("pause", str(root), "--until", "2030-01-01T00:00:00")
    assert naive.returncode == 2 and "offset" in naive.stderr
    past = reqcron_cmd("pause", str(root), "--until", "2000-01-01T00:00:00+00:00")
    assert past.returncode == 2 and "future" in past.stderr


# -- replay -----------------------------------------------------------------------


def test_replay_runs_each_slot_of_the_range_oldest_first_with_its_slot(make_site):
    root = make_site(slot_task(cron="0 9 * * *"))
    done = reqcron_cmd("replay", str(root), "Report", "--from", "2026-03-27T09:00:00+01:00",
                       "--to", "2026-03-30T09:00:00+02:00")
    assert done.returncode == 0, done.stderr
    runs = list(reversed(read_history(root, "Report")))
    assert [json.loads(r.return_value)["slot"] for r in runs] == [
        "2026-03-27T09:00:00+01:00", "2026-03-28T09:00:00+01:00",
        "2026-03-29T09:00:00+02:00", "2026-03-30T09:00:00+02:00"]  # both bounds inclusive
    assert {r.trigger for r in runs} == {"replay"} and {r.status for r in runs} == {"ok"}


def test_replay_refuses_more_slots_than_history_unless_forced(make_docroot):
    root = make_docroot(slot_task(cron="0 * * * *"), "[reqcron]\nhistory = 3\n")
    args = ("replay", str(root), "Report", "--from", "2026-01-01T00:00:00+00:00",
            "--to", "2026-01-01T03:00:00+00:00")
    refused = reqcron_cmd(*args)
    assert refused.returncode == 2 and "4 slots" in refused.stderr and "--force" in refused.stderr
    assert read_history(root, "Report") == []
    assert reqcron_cmd(*args, "--force").returncode == 0
    assert len(read_history(root, "Report")) == 3  # history keeps 3 of the 4


# -- the health endpoint ---------------------------------------------------------

HEALTH_TASKS = """
from reqcron import Task

class Hourly(Task):
    cron = "0 * * * *"

class Minutely(Task):
    cron = "* * * * *"
"""


def test_health_reports_an_overdue_slot_once_and_is_ok_after_its_own_tick(make_site, middleware):
    root = make_site(HEALTH_TASKS)
    with Docroot(root) as doc:
        doc.due(at=time.time() - 3 * 3600)  # first seen three hours ago; nothing since
    app = middleware(the_app, root, status_path="/_reqcron", status_token=STATUS_TOKEN)
    status, body = request(app, "/_reqcron/health")
    assert status.startswith("503") and body == b"2 tasks overdue\n"  # no names
    status, body = request(app, "/_reqcron/health",
                           HTTP_AUTHORIZATION=f"Bearer {STATUS_TOKEN}")
    assert status.startswith("503")
    data = json.loads(body)
    assert {t["task"] for t in data["overdue"]} == {"Hourly", "Minutely"}
    assert all(t["late"] > 3600 for t in data["overdue"])
    # The probes ticked: the slots were claimed, so the next probe reads ok.
    wait_for(lambda: request(app, "/_reqcron/health") == ("200 OK", b"ok\n"),
             message="health ok after its tick")


def test_health_is_ok_for_a_site_on_time_and_when_paused(make_site, middleware):
    root = make_site(HEALTH_TASKS)
    app = middleware(the_app, root, status_path="/_reqcron", status_token=STATUS_TOKEN)
    assert request(app, "/_reqcron/health") == ("200 OK", b"ok\n")
    with Docroot(root) as doc:
        doc.due(at=time.time() - 3 * 3600)
        doc.pause()
    assert request(app, "/_reqcron/health") == ("200 OK", b"ok\n")


HEALTH_APP = """
from reqcron import ReqCron

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]

application = ReqCron(hello, {docroot!r}, status_path="/_reqcron", status_token="t0ken")
"""

BEAT = """
from reqcron import Task

class Beat(Task):
    every = 2
    grace = 1.8
"""


def test_under_gunicorn_a_probe_every_second_keeps_a_quiet_site_on_time(make_docroot,
                                                                        tmp_path, serve):
    import urllib.error
    import urllib.request

    from realserver import BIN

    root = make_docroot(BEAT)
    (tmp_path / "app.py").write_text(HEALTH_APP.format(docroot=str(root)))
    server = serve(str(BIN / "gunicorn"), "--workers", "2", "--bind", "127.0.0.1:{port}",
                   "--graceful-timeout", "5", "app:application")

    def probe() -> int:
        try:
            with urllib.request.urlopen(server.url + "_reqcron/health", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    answers = []
    for _ in range(9):  # the only traffic: one probe a second
        answers.append(probe())
        time.sleep(1)
    runs = [r for r in read_history(root, "Beat") if r.status == "ok"]
    assert answers == [200] * 9
    assert len(runs) >= 3 and len({r.slot for r in runs}) == len(runs)
    time.sleep(5)  # no probe: the next slot is overdue past its grace
    assert probe() == 503
    wait_for(lambda: probe() == 200, timeout=5, interval=0.5, message="ok after the tick")


def test_explain_shows_only_the_slots_inside_between(make_docroot):
    root = make_docroot(slot_task(cron="0 * * * *", extra='between = "09:00-12:00"'))
    done = reqcron_cmd("explain", str(root), "Report", "--count", "6", "--json")
    assert done.returncode == 0, done.stderr
    hours = [datetime.fromisoformat(r["at"]).hour for r in json.loads(done.stdout)["runs"]]
    assert len(hours) == 6 and set(hours) == {9, 10, 11}


def test_explain_shows_the_sites_pause_and_which_slots_it_skips(make_docroot):
    root = make_docroot(slot_task(cron="0 * * * *", extra='between = "09:00-12:00"'))
    until = (datetime.now(UTC) + timedelta(days=1, hours=1)).isoformat(timespec="seconds")
    assert reqcron_cmd("pause", str(root), "--until", until).returncode == 0
    done = reqcron_cmd("explain", str(root), "Report", "--count", "6", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["between"] == "09:00-12:00" and data["site_paused"]["until"]
    ends = datetime.fromisoformat(until).timestamp()
    for r in data["runs"]:
        assert r["paused"] == (datetime.fromisoformat(r["at"]).timestamp() < ends), r
    assert any(r["paused"] for r in data["runs"]) and not all(r["paused"] for r in data["runs"])
    text = reqcron_cmd("explain", str(root), "Report", "--count", "6").stdout
    assert "the site is PAUSED since" in text and "only between 09:00-12:00" in text
    assert "paused: recorded as skipped" in text
    assert reqcron_cmd("resume", str(root)).returncode == 0
    data = json.loads(reqcron_cmd("explain", str(root), "Report", "--json").stdout)
    assert data["site_paused"] is None and not any(r["paused"] for r in data["runs"])
