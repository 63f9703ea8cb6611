"""Pages that stay small: the status page's tasks in pages, marked ones first, found by
name; each run's output on a page of its own, reached from the page."""

from __future__ import annotations

import json
import re

import pytest
from conftest import STATUS_TOKEN, last_run, runtask
from webob import Request

from reqcron.report import TASKS_PAGE

PATH = "/_reqcron/"
COUNT = 2 * TASKS_PAGE + TASKS_PAGE // 2  # two full pages and a half


def authed(app, path):
    return Request.blank(path, headers={"Authorization": f"Bearer {STATUS_TOKEN}"}
                         ).get_response(app)


def page_json(app, query=""):
    response = authed(app, f"{PATH}?format=json&{query}")
    assert response.status_int == 200, response.text
    return json.loads(response.body)


def task_rows(body):
    """The task names of the tasks table, in order."""
    table = body.split('<h2 id="tasks">')[1].split('<h2 id="runs">')[0]
    return re.findall(r"<tr><td><b>([^<]+)</b>", table)


@pytest.fixture
def site(make_docroot):
    """COUNT tasks that do nothing, one that crashes (Crash) and one disabled (Zzz)."""
    source = ["from reqcron import Task", "",
              "class Crash(Task):", "    def run(self):",
              "        print('crashing now')", "        raise RuntimeError('the disk is full')",
              "", "class Zzz(Task):", "    enabled = False", ""]
    for i in range(COUNT - 2):
        source += [f"class T{i:04d}(Task):", "    pass", ""]
    return make_docroot("\n".join(source))


def test_a_site_with_more_tasks_than_a_page_holds_shows_them_a_page_at_a_time(site, status_app):
    assert runtask(site, "Crash").returncode == 1
    first = authed(status_app, PATH).text
    names = task_rows(first)
    # Those with marks first (failing, disabled), then the others by name.
    assert names[:3] == ["Crash", "Zzz", "T0000"] and len(names) == TASKS_PAGE
    assert f"{COUNT:,} tasks: 1 disabled, 1 failing" in first and "page 1 of 3" in first
    assert 'href="/_reqcron/?tasks_page=2#tasks" rel="next">next →</a>' in first
    assert "?tasks_page=3#tasks" in first  # the last page
    assert names[-1] == "T0097" and "T0098" not in first

    second = authed(status_app, f"{PATH}?tasks_page=2").text
    assert task_rows(second) == [f"T{i:04d}" for i in range(98, 198)]
    assert 'href="/_reqcron/#tasks" rel="prev">← previous</a>' in second
    assert 'href="/_reqcron/?tasks_page=3#tasks" rel="next">' in second
    third = authed(status_app, f"{PATH}?tasks_page=3").text
    assert task_rows(third) == [f"T{i:04d}" for i in range(198, COUNT - 2)]
    assert "next →" not in third.split('<h2 id="runs">')[0]
    # Past the end: the last page (pages move as marks come and go).
    assert task_rows(authed(status_app, f"{PATH}?tasks_page=9").text) == task_rows(third)

    data = page_json(status_app, "tasks_page=2")
    assert [t["name"] for t in data["tasks"]] == task_rows(second)
    assert data["tasks_page"] == {
        "page": 2, "pages": 3, "size": TASKS_PAGE, "filter": None, "total": COUNT,
        "matching": COUNT, "previous": 1, "next": 3,
        "marks": {"disabled": 1, "broken": 0, "failing": 1, "starved": 0, "paused": 0,
                  "running long": 0}}
    crash = page_json(status_app)["tasks"][0]
    assert crash["name"] == "Crash" and crash["marks"] == ["failing"]
    assert crash["last_run"]["status"] == "failed" and len(crash["recent"]) == 1

    # The history's links keep the tasks table where it is.
    assert 'href="/_reqcron/?task=Crash&amp;tasks_page=2#runs"' in second


def test_tasks_are_found_by_a_part_of_their_name(site, status_app):
    found = authed(status_app, f"{PATH}?tasks_filter=t01").text  # any case
    assert task_rows(found) == [f"T{i:04d}" for i in range(100, 200)]
    assert f"{TASKS_PAGE:,} with “t01” in their name" in found
    assert 'name="tasks_filter" value="t01"' in found
    data = page_json(status_app, "tasks_filter=T019")
    assert [t["name"] for t in data["tasks"]] == [f"T{i:04d}" for i in range(190, 200)]
    assert (data["tasks_page"]["matching"], data["tasks_page"]["pages"]) == (10, 1)
    assert data["tasks_page"]["next"] is None
    assert page_json(status_app, "tasks_filter=nothing-like-it")["tasks"] == []


def test_a_run_s_output_is_on_its_own_page_reached_from_the_page(
        make_docroot, middleware, docroot):
    root = make_docroot("""
        from reqcron import Task

        class Chatty(Task):
            def run(self):
                for i in range(5000):
                    print(f"line {i} of a long output")
                raise ValueError("gave up at the end")

        class Generous(Task):
            def run(self):
                return {"rows": ["a row"] * 1000}
        """)
    app = middleware(lambda e, s: [], root, status_path="/_reqcron", status_token=STATUS_TOKEN)
    assert runtask(root, "Chatty").returncode == 1
    run = last_run(root, "Chatty")
    page = authed(app, PATH).text
    assert "line 4999 of a long output" not in page and "gave up at the end" in page
    link = re.search(rf'<a href="(/_reqcron/\?run={run.id})" class="more">output</a>', page)
    assert link is not None

    shown = authed(app, link.group(1))
    assert shown.status_int == 200 and shown.content_type == "text/html"
    assert "line 4999 of a long output" in shown.text  # the whole (capped) output
    assert "ValueError: gave up at the end" in shown.text and "Traceback" in shown.text
    assert 'href="/_reqcron/?task=Chatty#runs"' in shown.text
    assert "<script>" not in shown.text

    data = json.loads(authed(app, f"{PATH}?run={run.id}&format=json").body)
    assert data["id"] == run.id and data["task"] == "Chatty" and data["status"] == "failed"
    assert "line 4999 of a long output" in data["output"] and "ValueError" in data["traceback"]
    # The page's JSON holds no output either.
    assert "line 4999" not in authed(app, f"{PATH}?format=json").text

    # A return value too big to list is left out of the page, whole on the run's own.
    assert runtask(root, "Generous").returncode == 0
    generous = last_run(root, "Generous").id
    listed = next(h for h in page_json(app)["history"] if h["id"] == generous)
    assert listed["return_value"] is None and listed["return_value_omitted"] is True
    whole = json.loads(authed(app, f"{PATH}?run={generous}&format=json").body)
    assert whole["return_value"] == {"rows": ["a row"] * 1000}
    assert "return_value_omitted" not in whole

    missing = authed(app, f"{PATH}?run={run.id + 1000}")
    assert missing.status_int == 404 and f"No run {run.id + 1000}" in missing.text
    missing = authed(app, f"{PATH}?run={run.id + 1000}&format=json")
    assert missing.status_int == 404 and "error" in json.loads(missing.body)
    assert docroot(root).get_run(run.id) is not None
