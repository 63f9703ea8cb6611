"""{status_path}/metrics: Prometheus text from the shared state, behind either token."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import hello, read_history, request, runtask, start_runtask, wait_for, write
from prometheus_client.parser import text_string_to_metric_families

import reqcron
import reqcron.web.metrics
from reqcron.engine.stored_calls import Call, new_run
from reqcron.records import Run, Status, now

TOKEN = "status-s3cret"
SCRAPER = "scraper-s3cret"
PATH = "/_reqcron"

TASKS = """\
import os, time
from datetime import UTC, datetime, timedelta
from reqcron import Task

class Report(Task):
    def run(self):
        time.sleep(0.2)
        print("report done")

class Crash(Task):
    def run(self):
        raise RuntimeError("the disk is full")

class Paused(Task):
    every = timedelta(days=1)
    enabled = False

class Once(Task):
    at = datetime.fromtimestamp({at}, UTC)

class Slow(Task):
    def run(self):
        deadline = time.time() + 60
        while not os.path.exists({flag!r}) and time.time() < deadline:
            time.sleep(0.05)
"""

JOBS = """\
from reqcron import delay

@delay(minutes=60)  # stays queued for the whole test
def later(x):
    return x
"""


def scrape(app, token: str = TOKEN) -> tuple[str, bytes]:
    return request(app, PATH + "/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.documentation, f"{family.name} has no HELP text"
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_real_runs_calls_and_agree_between_workers(
        make_site, middleware, tmp_path, monkeypatch, app_module, docroot):
    flag = tmp_path / "let-slow-end"
    at = now() + 3
    root = make_site(TASKS.format(at=at, flag=str(flag)))
    docroot(root).catalog()  # Once is seen before its moment, so its slot counts
    assert runtask(root, "Report").returncode == 0
    assert runtask(root, "Report").returncode == 0
    assert runtask(root, "Crash").returncode == 1
    wait_for(lambda: now() > at + 0.5, timeout=10, message="Once's moment")
    assert runtask(root, "--if-due", "Once").returncode == 0  # the crontab's way: a slot
    slow = start_runtask(root, "Slow")
    try:
        wait_for(lambda: [r for r in read_history(root, "Slow") if r.status == "running"],
                 timeout=30, message="Slow to be running")
        # A deferred call, queued in this DOCROOT's state through REQCRON_DOCROOT.
        monkeypatch.setenv("REQCRON_DOCROOT", str(root))
        assert app_module(JOBS).later(1).status == "queued"

        # Two "workers" over the one state.
        one = middleware(hello, root, status_path=PATH, status_token=TOKEN)
        two = middleware(hello, root, status_path=PATH, status_token=TOKEN)
        status, body = scrape(one)
        assert status == "200 OK", body
        found = samples(body)
        assert samples(scrape(two)[1]) == found

        history = docroot(root).history(limit=100)
        reports = [r for r in history if r.task == "Report"]
        assert value(found, "reqcron_runs", task="Report", status="ok") == 2
        assert value(found, "reqcron_runs", task="Report", status="failed") == 0
        assert value(found, "reqcron_runs", task="Crash", status="failed") == 1
        assert value(found, "reqcron_runs", task="Once", status="ok") == 1
        assert value(found, "reqcron_runs", task="Slow", status="running") == 1
        assert value(found, "reqcron_runs", task="Paused", status="ok") == 0
        assert value(found, "reqcron_calls", status="queued") == 1
        assert value(found, "reqcron_calls", status="running") == 0
        assert value(found, "reqcron_last_success_timestamp_seconds", task="Report") == (
            pytest.approx(max(r.end for r in reports)))
        assert value(found, "reqcron_last_success_timestamp_seconds", task="Crash") is None
        assert value(found, "reqcron_last_run_duration_seconds", task="Report") == (
            pytest.approx(reports[0].duration))
        durations = [r.duration for r in reports]
        assert value(found, "reqcron_run_duration_max_seconds", task="Report") == (
            pytest.approx(max(durations)))
        assert value(found, "reqcron_run_duration_mean_seconds", task="Report") == (
            pytest.approx(sum(durations) / 2))
        assert min(durations) >= 0.2
        (once,) = [r for r in history if r.task == "Once"]
        assert once.lateness is not None and once.lateness > 0
        assert value(found, "reqcron_last_run_lateness_seconds", task="Once") == (
            pytest.approx(once.lateness))
        assert value(found, "reqcron_last_run_lateness_seconds", task="Report") is None
        for task in ("Report", "Crash", "Paused", "Once", "Slow"):
            assert value(found, "reqcron_task_enabled", task=task) == (task != "Paused")
            assert value(found, "reqcron_task_starved", task=task) == 0
            assert value(found, "reqcron_task_broken", task=task) == 0
        assert value(found, "reqcron_load_errors") == 0
        assert value(found, "reqcron_next_run_timestamp_seconds", task="Paused") is None
        # The site's aggregates beside them.
        assert value(found, "reqcron_tasks") == 5
        assert value(found, "reqcron_per_task_series") == 1
        assert value(found, "reqcron_tasks_marked", mark="failing") == 1  # Crash
        assert value(found, "reqcron_tasks_marked", mark="disabled") == 1  # Paused
        assert value(found, "reqcron_tasks_marked", mark="starved") == 0
        assert value(found, "reqcron_site_runs", status="ok") == 3  # Report twice, Once
        assert value(found, "reqcron_site_runs", status="running") == 1
    finally:
        flag.touch()
        slow.communicate(timeout=60)

    # The run that ended is seen by both workers at once: nothing is cached per process.
    found = samples(scrape(one)[1])
    assert value(found, "reqcron_runs", task="Slow", status="ok") == 1
    assert value(found, "reqcron_runs", task="Slow", status="running") == 0
    assert samples(scrape(two)[1]) == found


def test_a_broken_task_and_a_starved_one_show(make_site, middleware, docroot):
    root = make_site("""\
        from reqcron import Task

        class Minutely(Task):
            cron = "* * * * *"

        class Fine(Task):
            pass
        """)
    doc = docroot(root)
    state = doc.states()["Minutely"]
    # Nothing triggered it for an hour: its first unclaimed slot is that old.
    assert doc.store.reposition("Minutely", state.next_due, state.signature, now() - 3600)
    from prometheus_client import CollectorRegistry, generate_latest

    from reqcron.web.metrics import DocrootCollector

    registry = CollectorRegistry()
    registry.register(DocrootCollector(docroot(root)))
    found = samples(generate_latest(registry))
    assert value(found, "reqcron_task_starved", task="Minutely") == 1
    assert value(found, "reqcron_task_starved", task="Fine") == 0
    assert value(found, "reqcron_tasks_marked", mark="starved") == 1

    write(root / "__tasks__.py", """\
        from reqcron import Task

        class Minutely(Task):
            cron = "not a schedule"

        class Fine(Task):
            pass
        """)
    app = middleware(hello, root, status_path=PATH, status_token=TOKEN, watch=False)
    found = wait_for(lambda: (f := samples(scrape(app)[1]))
                     and value(f, "reqcron_load_errors") == 1 and f, timeout=30,
                     message="the load error")
    assert value(found, "reqcron_task_broken", task="Minutely") == 1
    assert value(found, "reqcron_task_broken", task="Fine") == 0
    assert value(found, "reqcron_tasks_marked", mark="broken") == 1


def test_run_stats_aggregates_the_kept_history_on_both_stores(make_site, docroot):
    store = docroot(make_site("from reqcron import Task\nclass A(Task): pass\n")).store
    t = now()
    store.add_run(Run("A", "cron", Status.OK, t, slot=t, lateness=2.0, start=t, end=t + 3))
    store.add_run(Run("A", "cron", Status.OK, t, slot=t, lateness=1.0, start=t, end=t + 5))
    store.add_run(Run("A", "manual", Status.FAILED, t, start=t, end=t + 1))
    store.add_run(Run("A", "manual", Status.RUNNING, t, start=t))
    store.add_run(new_run(Call("m:f", [], {}), t, t + 60))
    stats = store.run_stats()
    counts = {(c.task, c.status, c.call): c for c in stats.counts}
    ok = counts[("A", "ok", False)]
    assert (ok.runs, ok.timed, ok.seconds, ok.longest, ok.last_end) == (2, 2, 8.0, 5.0, t + 5)
    assert counts[("A", "failed", False)].runs == 1
    assert (counts[("A", "running", False)].runs, counts[("A", "running", False)].timed) == (1, 0)
    assert counts[("m:f", "queued", True)].runs == 1
    assert stats.lateness == {"A": 1.0}  # of the latest claimed slot
    assert stats.duration == {"A": 1.0}  # of the latest run that ended


def many_tasks(n: int) -> str:
    return "from reqcron import Task\n" + "".join(
        f"class T{i:04d}(Task):\n    pass\n" for i in range(n))


def test_above_the_limit_a_scrape_has_the_aggregates_and_no_per_task_series(
        make_docroot, middleware, docroot):
    n = reqcron.web.metrics.PER_TASK_LIMIT + 1
    root = make_docroot(many_tasks(n))
    doc = docroot(root)
    assert len(doc.catalog().tasks) == n
    t = now()
    doc.store.add_run(Run("T0000", "manual", Status.FAILED, t, start=t, end=t + 1))
    doc.store.add_run(Run("T0001", "manual", Status.FAILED, t, start=t, end=t + 1))
    doc.store.add_run(Run("T0001", "manual", Status.OK, t + 2, start=t + 2, end=t + 3))
    doc.disable("T0002")
    app = middleware(hello, root, status_path=PATH, status_token=TOKEN)

    status, body = scrape(app)
    assert status == "200 OK"
    found = samples(body)
    assert [key for key in found if "task" in dict(key[1])] == []
    assert b"T0000" not in body
    assert value(found, "reqcron_per_task_series") == 0
    assert value(found, "reqcron_tasks") == n
    assert value(found, "reqcron_tasks_marked", mark="failing") == 1  # T0001 ran well since
    assert value(found, "reqcron_tasks_marked", mark="disabled") == 1
    assert value(found, "reqcron_tasks_marked", mark="broken") == 0
    assert value(found, "reqcron_site_runs", status="failed") == 2
    assert value(found, "reqcron_site_runs", status="ok") == 1
    assert value(found, "reqcron_calls", status="queued") == 0
    assert value(found, "reqcron_load_errors") == 0

    # Asked for, they are there, beside the same aggregates.
    status, body = request(app, PATH + "/metrics", QUERY_STRING="per_task=1",
                           HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    forced = samples(body)
    assert value(forced, "reqcron_per_task_series") == 1
    assert value(forced, "reqcron_runs", task="T0000", status="failed") == 1
    assert value(forced, "reqcron_task_enabled", task="T0002") == 0
    assert value(forced, "reqcron_task_enabled", task=f"T{n - 1:04d}") == 1
    assert {k: v for k, v in forced.items() if "task" not in dict(k[1])} == {
        k: v for k, v in found.items() if k[0] != "reqcron_per_task_series"} | {
        ("reqcron_per_task_series", ()): 1.0}


def test_a_scrape_may_leave_the_per_task_series_out_and_says_so(make_docroot, middleware):
    app = middleware(hello, make_docroot(many_tasks(3)), status_path=PATH, status_token=TOKEN)
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    found = samples(request(app, PATH + "/metrics", QUERY_STRING="per_task=0", **bearer)[1])
    assert [key for key in found if "task" in dict(key[1])] == []
    assert value(found, "reqcron_tasks") == 3 and value(found, "reqcron_per_task_series") == 0
    status, body = request(app, PATH + "/metrics", QUERY_STRING="per_task=all", **bearer)
    assert status.startswith("400") and b"per_task must be 1" in body


# -- who may read them -------------------------------------------------------------------


@pytest.fixture
def root(make_docroot):
    return make_docroot("from reqcron import Task\nclass Secret(Task): pass\n")


def test_metrics_need_a_token_and_reveal_nothing_without_it(root, middleware):
    app = middleware(hello, root, status_path=PATH, status_token=TOKEN, metrics_token=SCRAPER)
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}):
        status, body = request(app, PATH + "/metrics", **headers)
        assert status.startswith("401") and b"Secret" not in body
    assert scrape(app, TOKEN)[0] == "200 OK"
    status, body = scrape(app, SCRAPER)
    assert status == "200 OK" and b'reqcron_task_enabled{task="Secret"} 1.0' in body


def test_the_metrics_token_opens_the_metrics_and_nothing_else(root, middleware):
    from webob import Request

    app = middleware(hello, root, status_path=PATH, status_token=TOKEN, metrics_token=SCRAPER)
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {SCRAPER}"}
    for path in (PATH + "/", PATH + "/?format=json"):
        status, body = request(app, path, **bearer)
        assert status.startswith("401") and b"Secret" not in body
    refused = Request.blank(PATH + "/login", POST={"token": SCRAPER}).get_response(app)
    assert refused.status_int == 401 and "Set-Cookie" not in refused.headers
    # A session of the status token reads the metrics too.
    login = Request.blank(PATH + "/login", POST={"token": TOKEN}).get_response(app)
    cookie = login.headers["Set-Cookie"].split(";")[0]
    page = Request.blank(PATH + "/metrics", headers={"Cookie": cookie}).get_response(app)
    assert page.status_int == 200 and page.content_type == "text/plain"
    assert b"reqcron_runs" in page.body


def test_a_metrics_token_alone_serves_the_metrics_and_leaves_the_page_off(root, middleware):
    app = middleware(hello, root, status_path=PATH, metrics_token=SCRAPER)
    assert scrape(app, SCRAPER)[0] == "200 OK"
    assert request(app, PATH + "/metrics")[0].startswith("401")
    for path in (PATH, PATH + "/", PATH + "/login"):
        assert request(app, path, HTTP_AUTHORIZATION=f"Bearer {SCRAPER}")[1] == b"hello"


def test_without_prometheus_client_metrics_answer_501_and_the_page_still_works(
        root, middleware, monkeypatch):
    for module in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    app = middleware(hello, root, status_path=PATH, status_token=TOKEN)
    status, body = scrape(app)
    assert status.startswith("501") and b"pip install 'reqcron[metrics]'" in body
    assert len(body.decode().strip().splitlines()) == 1
    page = request(app, PATH + "/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert page[0] == "200 OK" and b"Secret" in page[1]
    assert request(app, "/")[1] == b"hello"


def test_the_metrics_are_all_documented_in_the_readme():
    readme = (Path(reqcron.__file__).parent.parent / "README.md").read_text()
    source = (Path(reqcron.__file__).parent / "web" / "metrics.py").read_text()
    names = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and n.value.startswith("reqcron_")}
    assert len(names) == 16
    assert [n for n in sorted(names) if f"`{n}`" not in readme] == []

