"""Function tasks: @cron and @every in __tasks__.py, through every surface."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from conftest import drive, hello, last_run, reqcron_cmd, runtask, write

from reqcron import Task, cron, every

TASKS = """
import time
from reqcron import Task, cron, every

@cron("30 9 * * 1,3")
def newsletter():
    print("sending the newsletter")
    return {"sent": 2}

@cron(minutes=[30], hours=[9], days_of_week=[0, 2])
def newsletter_kw():
    pass

@every(minutes=5, timeout=60, name="heart-beat")
def heartbeat():
    return "alive"

@cron("0 0 1 1 *", timeout=0.5, stop_grace=0.5)
def hangs():
    time.sleep(30)

class Classic(Task):
    cron = "@daily"
"""

UTC_TOML = '[reqcron]\ntimezone = "UTC"\n'
MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, 00:00


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS, UTC_TOML)


def runs_from(task: Task, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for _ in range(count):
        nxt = task.next_run(after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


def test_decorated_functions_are_tasks_named_after_them(site, docroot):
    doc = docroot(site)
    assert sorted(doc.tasks()) == ["Classic", "hangs", "heart-beat", "newsletter",
                                   "newsletter_kw"]
    assert doc.load_errors() == []
    listed = json.loads(reqcron_cmd("list", str(site), "--json").stdout)
    assert {"newsletter", "newsletter_kw", "heart-beat", "hangs"} <= {
        t["name"] for t in listed["tasks"]}


def test_the_string_and_keyword_forms_give_the_same_runs(site, docroot):
    tasks = docroot(site).tasks()
    expected = [datetime(2024, 1, 1, 9, 30, tzinfo=UTC), datetime(2024, 1, 3, 9, 30, tzinfo=UTC),
                datetime(2024, 1, 8, 9, 30, tzinfo=UTC)]
    assert runs_from(tasks["newsletter"], MONDAY, 3) == expected
    assert runs_from(tasks["newsletter_kw"], MONDAY, 3) == expected
    # The engine agrees: explain, from now on, lands on Mondays and Wednesdays at 09:30.
    data = json.loads(reqcron_cmd("explain", str(site), "newsletter_kw", "--count", "4",
                                  "--json").stdout)
    at = [datetime.fromisoformat(r["at"]) for r in data["runs"]]
    assert len(at) == 4 and {(a.weekday(), a.hour, a.minute) for a in at} <= {(0, 9, 30),
                                                                              (2, 9, 30)}


@pytest.mark.parametrize(("decorator", "expr"), [
    ("cron(days_of_week=0, hours=12, minutes=0)", "0 12 * * 1"),     # Monday
    ("cron(days_of_week=[5, 6], hours=12, minutes=0)", "0 12 * * 0,6"),  # the weekend
    ("cron(minutes=range(0, 60, 15))", "0,15,30,45 * * * *"),
    ("cron(hours=9)", "* 9 * * *"),        # autocron: a field left out is every value
    ("cron(days=1, months=[1, 7], hours=0, minutes=0)", "0 0 1 1,7 *"),
    ("cron()", "* * * * *"),
])
def test_keyword_fields_follow_autocron(make_docroot, decorator, expr, docroot):
    root = make_docroot(f"from reqcron import cron\n@{decorator}\ndef job():\n    pass\n")
    (task,) = docroot(root).tasks().values()
    assert task.compiled_schedule().signature.split("@")[0] == f"cron:{expr}"


def test_days_of_week_count_from_monday(make_docroot, docroot):
    root = make_docroot("""
        from reqcron import cron
        @cron(minutes=0, hours=12, days_of_week=6)
        def sunday():
            pass
    """, UTC_TOML)
    (task,) = docroot(root).tasks().values()
    assert runs_from(task, MONDAY, 2) == [datetime(2024, 1, 7, 12, tzinfo=UTC),
                                          datetime(2024, 1, 14, 12, tzinfo=UTC)]


def test_every_runs_by_requests_through_the_middleware(make_docroot, middleware, docroot):
    root = make_docroot("""
        from reqcron import every

        @every(seconds=1)
        def tick():
            return {"ticked": True}
    """)
    app = middleware(hello, root)
    doc = docroot(root)
    (run, *_) = drive(app, lambda: doc.store.runs("tick", statuses=("ok",)),
                      message="a run of tick")
    assert run.trigger == "request" and run.exit_code == 0
    assert json.loads(run.return_value) == {"ticked": True}


def test_runtask_runs_a_function_task_by_its_name(site):
    proc = runtask(site, "newsletter")
    assert proc.returncode == 0, proc.stderr
    assert "sending the newsletter" in proc.stdout
    run = last_run(site, "newsletter")
    assert (run.status, run.trigger) == ("ok", "manual")
    assert run.return_value == '{"sent": 2}'
    assert "sending the newsletter" in run.output
    assert runtask(site, "heart-beat").returncode == 0  # by its name= keyword
    assert last_run(site, "heart-beat").return_value == '"alive"'


def test_attribute_keywords_apply_a_timeout_stops_a_hanging_function(site, docroot):
    proc = runtask(site, "hangs")
    assert proc.returncode == 124
    run = last_run(site, "hangs")
    assert run.status == "timeout" and "timeout of 0.5 s" in run.error
    info = docroot(site).info("heart-beat")
    assert info.timeout == 60


def test_a_misspelt_interval_keyword_names_the_interval_keywords():
    with pytest.raises(TypeError) as every_error:
        every(secs=5)
    message = str(every_error.value)
    assert "'secs'" in message and "\n" not in message
    assert all(f"{k}=" in message for k in ("seconds", "minutes", "hours", "days", "weeks"))
    with pytest.raises(TypeError) as cron_error:
        cron(minute=5)
    message = str(cron_error.value)
    assert "'minute'" in message and "cron expression" in message
    assert all(f"{k}=" in message for k in ("minutes", "hours", "months", "days_of_week"))


def test_an_unknown_keyword_is_a_type_error_naming_it_and_the_allowed_ones():
    with pytest.raises(TypeError, match=r"unexpected keyword 'timout'.*\btimeout\b"):
        every(minutes=5, timout=60)
    with pytest.raises(TypeError, match="'cron'"):
        every(minutes=5, cron="* * * * *")
    with pytest.raises(TypeError, match="give one form"):
        cron("0 1 * * *", hours=[1])
    with pytest.raises(TypeError, match="needs parentheses"):
        cron(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must take no arguments"):
        cron("0 1 * * *")(lambda x: x)
    with pytest.raises(TypeError, match="one @cron or @every"):
        every(hours=1)(direct)


def test_an_unknown_keyword_in_the_tasks_file_names_its_line(make_docroot):
    root = make_docroot("from reqcron import every\n\n@every(minutes=5, timout=60)\n"
                        "def beat():\n    pass\n")
    proc = reqcron_cmd("check", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{root / '__tasks__.py'}:3: TypeError" in proc.stderr and "'timout'" in proc.stderr


def test_a_bad_schedule_in_one_function_leaves_the_others_working(make_docroot, docroot):
    root = make_docroot("""\
        from reqcron import Task, cron, every

        @cron("0 1 * * *")
        def good():
            return "fine"

        @cron("61 * * * *")
        def bad_string():
            pass

        @cron(
            minutes=60,
        )
        def bad_minute():
            pass

        @every()
        def no_interval():
            pass

        @cron("0 2 * * *", timezone="Nowhere/Here")
        def bad_zone():
            pass

        class Other(Task):
            name = "good"

        @every(hours=1)
        def fine():
            pass
    """)
    doc = docroot(root)
    assert list(doc.tasks()) == ["fine"]  # 'good' is taken twice: neither registers
    errors = {e.task: (e.line, e.message) for e in doc.load_errors()}
    assert set(errors) == {"good", "bad_string", "bad_minute", "no_interval", "bad_zone"}
    assert errors["bad_string"][0] == 7 and "invalid schedule" in errors["bad_string"][1]
    assert errors["bad_minute"] == (
        11, "task 'bad_minute' has an invalid schedule: minutes=60 is out of range 0..59")
    assert errors["no_interval"][0] == 17 and "every must be" in errors["no_interval"][1]
    assert errors["bad_zone"][0] == 21 and "Nowhere/Here" in errors["bad_zone"][1]
    assert "used by good and Other" in errors["good"][1]

    write(root / "__tasks__.py", "from reqcron import cron\n\n@cron('0 1 * * *')\n"
          "def good():\n    return 'fine'\n\n@cron('bad')\ndef bad():\n    pass\n")
    doc = docroot(root)
    assert list(doc.tasks()) == ["good"]
    proc = reqcron_cmd("check", str(root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{root / '__tasks__.py'}:7: task 'bad' has an invalid schedule" in proc.stderr
    assert runtask(root, "good").returncode == 0
    refused = runtask(root, "bad")
    assert refused.returncode == 2 and "task 'bad' has an invalid schedule" in refused.stderr


def test_a_function_that_turns_bad_keeps_its_last_good_schedule(make_docroot, docroot):
    root = make_docroot("from reqcron import cron\n@cron('0 1 * * *')\ndef job():\n    pass\n")
    doc = docroot(root)
    before = doc.catalog().tasks["job"].signature
    write(root / "__tasks__.py", "from reqcron import cron\n@cron('0 99 * * *')\n"
          "def job():\n    pass\n")
    assert doc.catalog().tasks["job"].signature == before
    assert "invalid schedule" in (doc.catalog().error_of("job") or "")


@cron("15 4 * * *", timeout=30)
def direct() -> str:
    """Mark the day."""
    return "called"


def test_the_function_is_still_callable_directly():
    assert direct() == "called"
    task_class = direct.__reqcron_task__  # type: ignore[attr-defined]
    assert issubclass(task_class, Task)
    assert task_class.name == "direct" and task_class.timeout == 30
    assert task_class.__module__ == __name__ and task_class.__qualname__ == "direct"
    assert task_class.__doc__ == "Mark the day."
    assert task_class().run() == "called"


def test_import_reqcron_and_decorating_stay_light():
    code = ("import sys, reqcron\n"
            "@reqcron.cron('0 1 * * *')\ndef a(): pass\n"
            "@reqcron.cron(minutes=[5])\ndef b(): pass\n"
            "@reqcron.every(hours=1)\ndef c(): pass\n"
            "print('croniter' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
