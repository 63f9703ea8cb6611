"""The status page: opt-in, auth, CSRF, escaping, JSON, and a real browser clicking "Run now"."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest
from conftest import STATUS_TOKEN, last_run, the_app, wait_for
from webob import Request

from reqcron import Docroot

TOKEN = STATUS_TOKEN
TASKS = """
from reqcron import Task

class Reindex(Task):
    def run(self):
        print("reindexed <everything>")
        return "done"

class Broken(Task):
    def run(self):
        raise RuntimeError("<script>alert('x')</script>")
"""


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS)


def get(app, path, **kwargs):
    return Request.blank(path, **kwargs).get_response(app)


def authed(app, path, **kwargs):
    headers = kwargs.pop("headers", {})
    headers["Authorization"] = f"Bearer {TOKEN}"
    return get(app, path, headers=headers, **kwargs)


def test_off_by_default(site, middleware):
    for kwargs in ({}, {"status_path": "/_reqcron"}, {"status_token": TOKEN}):
        wrapped = middleware(the_app, site, **kwargs)
        assert get(wrapped, "/_reqcron/").body == b"the app"


def test_without_the_token_401_and_nothing_revealed(status_app):
    for path in ("/_reqcron", "/_reqcron/", "/_reqcron/?format=json"):
        response = get(status_app, path)
        assert response.status_int == 401
        assert b"Reindex" not in response.body and b"Broken" not in response.body
    wrong = get(status_app, "/_reqcron/", headers={"Authorization": "Bearer nope"})
    assert wrong.status_int == 401
    assert get(status_app, "/elsewhere").body == b"the app"


def test_bearer_token_shows_tasks_and_json(status_app):
    page = authed(status_app, "/_reqcron/")
    assert page.status_int == 200 and b"Reindex" in page.body and b"Run now" in page.body
    data = json.loads(authed(status_app, "/_reqcron/?format=json").body)
    assert {t["name"] for t in data["tasks"]} == {"Reindex", "Broken"}
    assert data["csrf"]


def test_error_text_is_escaped(status_app, site):
    from conftest import runtask

    assert runtask(site, "Broken").returncode == 1
    assert runtask(site, "Reindex").returncode == 0
    body = authed(status_app, "/_reqcron/").text
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in body
    # Outputs are on each run's own page, escaped there too.
    broken, reindex = (last_run(site, name).id for name in ("Broken", "Reindex"))
    assert "reindexed" not in body and f'href="/_reqcron/?run={reindex}"' in body
    shown = authed(status_app, f"/_reqcron/?run={reindex}").text
    assert "reindexed &lt;everything&gt;" in shown and "<everything>" not in shown
    shown = authed(status_app, f"/_reqcron/?run={broken}").text
    assert "<script>alert" not in shown and "Traceback" in shown
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in shown


def test_actions_need_post_and_csrf(status_app, site, docroot):
    csrf = json.loads(authed(status_app, "/_reqcron/?format=json").body)["csrf"]
    assert authed(status_app, "/_reqcron/action?action=run&task=Reindex").status_int == 405
    no_csrf = authed(status_app, "/_reqcron/action", POST={"action": "disable", "task": "Reindex"})
    assert no_csrf.status_int == 403
    assert docroot(site).is_enabled("Reindex")
    ok = authed(status_app, "/_reqcron/action", POST={"action": "disable", "task": "Reindex",
                                                       "csrf": csrf})
    assert ok.status_int == 303
    assert not docroot(site).is_enabled("Reindex")
    unknown = authed(status_app, "/_reqcron/action", POST={"action": "run", "task": "../x",
                                                            "csrf": csrf})
    assert unknown.status_int == 404 and b"known tasks" in unknown.body


def test_the_page_pauses_and_resumes_the_whole_site(status_app, site, docroot):
    page = authed(status_app, "/_reqcron/").text
    assert "Pause every task" in page and "PAUSED" not in page
    csrf = json.loads(authed(status_app, "/_reqcron/?format=json").body)["csrf"]
    paused = authed(status_app, "/_reqcron/action", POST={"action": "pause", "csrf": csrf})
    assert paused.status_int == 303
    doc = docroot(site)
    assert doc.paused() is not None and doc.paused().until is None  # until resumed
    page = authed(status_app, "/_reqcron/").text
    assert "PAUSED" in page and "until resumed" in page and ">Resume<" in page
    data = json.loads(authed(status_app, "/_reqcron/?format=json").body)
    assert data["paused"]["until"] is None
    assert all("paused" in t["marks"] for t in data["tasks"])
    resumed = authed(status_app, "/_reqcron/action", POST={"action": "resume", "csrf": csrf,
                                                           "format": "json"},
                     headers={"Accept": "application/json"})
    assert resumed.status_int in (200, 303) and doc.paused() is None
    assert "PAUSED" not in authed(status_app, "/_reqcron/").text
    # Without the CSRF token nothing changes.
    assert authed(status_app, "/_reqcron/action", POST={"action": "pause"}).status_int == 403
    assert doc.paused() is None


def test_login_form_sets_a_strict_httponly_cookie(status_app):
    bad = get(status_app, "/_reqcron/login", POST={"token": "wrong"})
    assert bad.status_int == 401
    good = get(status_app, "/_reqcron/login", POST={"token": TOKEN})
    assert good.status_int == 303
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    page = get(status_app, "/_reqcron/", headers={"Cookie": value})
    assert page.status_int == 200 and b"Reindex" in page.body


def add_runs(site, task, statuses, start=None):
    """Record runs of ``task`` directly, oldest first, one a minute; return their ids."""
    from reqcron.records import Run

    start = start or __import__("time").time() - 3600
    doc = Docroot(site)
    try:
        return [doc.store.add_run(Run(task=task, trigger="request", status=status,
                                      created=start + 60 * i, start=start + 60 * i,
                                      end=start + 60 * i + 0.5 * (i + 1),
                                      error="stopped by its timeout" if status == "timeout"
                                      else None))
                for i, status in enumerate(statuses)]
    finally:
        doc.close()


def test_each_task_has_a_strip_of_its_latest_runs(status_app, site):
    import re

    statuses = ["ok", "failed", "timeout", "skipped", "missed", "lost", "ok"] * 5
    add_runs(site, "Reindex", statuses)
    body = authed(status_app, "/_reqcron/").text
    row = re.search(r"<tr><td><b>Reindex</b>.*?</tr>", body, re.S).group(0)
    bars = re.findall(r'<rect class="bar b-(\w+)"[^>]*height="(\d+)"><title>([^<]*)</title>', row)
    assert len(bars) == 30  # the latest 30, oldest on the left
    assert [kind for kind, _, _ in bars[-7:]] == ["ok", "bad", "bad", "skip", "miss", "bad", "ok"]
    heights = [int(h) for kind, h, _ in bars if kind in ("ok", "bad")]
    assert max(heights) == 23 and min(heights) >= 2  # the longest fills it, the shortest shows
    assert bars[-1][2].endswith(" · ok · 18 s") and " · skipped" in bars[-4][2]
    assert 'href="/_reqcron/?task=Reindex#runs"' in row
    broken = re.search(r"<tr><td><b>Broken</b>.*?</tr>", body, re.S).group(0)
    assert 'aria-label="no runs yet"' in broken and "<rect" not in broken
    data = json.loads(authed(status_app, "/_reqcron/?format=json").body)
    recent = next(t for t in data["tasks"] if t["name"] == "Reindex")["recent"]
    assert len(recent) == 30 and recent[0]["status"] == "ok" and recent[0]["duration"] == 17.5


def test_history_filters_by_task_and_pages_by_run_id(status_app, site):
    reindex = add_runs(site, "Reindex", ["ok"] * 60)
    broken = add_runs(site, "Broken", ["failed"] * 3)
    data = json.loads(authed(status_app, "/_reqcron/?format=json").body)
    assert [h["id"] for h in data["history"]] == (broken[::-1] + reindex[::-1])[:50]
    assert data["newer"] is None and data["next"] == reindex[-47]
    older = json.loads(authed(status_app, f"/_reqcron/?format=json&before={data['next']}").body)
    assert [h["id"] for h in older["history"]] == reindex[-48::-1]
    assert older["next"] is None and older["newer"] == reindex[-48]
    newer = json.loads(authed(status_app, f"/_reqcron/?format=json&after={older['newer']}").body)
    assert [h["id"] for h in newer["history"]] == (broken[::-1] + reindex[::-1])[:50]
    assert newer["newer"] is None and newer["next"] == reindex[-47]

    only = json.loads(authed(status_app, "/_reqcron/?format=json&task=Broken").body)
    assert only["task"] == "Broken" and [h["id"] for h in only["history"]] == broken[::-1]
    assert only["next"] is None and only["newer"] is None
    page = authed(status_app, "/_reqcron/?task=Reindex").text
    assert "Runs of Reindex" in page and "failed" not in page.split('id="history"')[1]
    assert f'href="/_reqcron/?task=Reindex&amp;before={reindex[-50]}#runs"' in page
    assert '<option value="Reindex" selected>' in page


@pytest.mark.parametrize(("query", "needle"), [
    ("before=abc", "before must be a run id"),
    ("before=0", "before must be a run id"),
    ("after=-1", "after must be a run id"),
    ("before=99999999999999999999999", "before must be a run id"),
    ("before=3&after=1", "not both"),
    ("task=Nope", "No task or call named 'Nope'"),
    ("task=%00x", "task must be the name of a task"),
    ("format=xml", "format must be html or json"),
    ("tasks_page=0", "tasks_page must be a page number"),
    ("tasks_page=two", "tasks_page must be a page number"),
    ("tasks_filter=%07", "tasks_filter must be a part of task names"),
    ("run=abc", "run must be a run id"),
])
def test_bad_parameters_are_a_clear_400(status_app, query, needle):
    page = authed(status_app, f"/_reqcron/?{query}")
    assert page.status_int == 400 and needle in page.text and "Traceback" not in page.text
    if "format=" in query:
        return
    data = authed(status_app, f"/_reqcron/?{query}&format=json")
    assert data.status_int == 400 and data.content_type == "application/json"
    assert needle in json.loads(data.body)["error"]


def test_json_asked_by_accept_header_is_a_json_401_too(status_app):
    response = get(status_app, "/_reqcron/?task=Reindex", headers={"Accept": "application/json"})
    assert response.status_int == 401 and response.content_type == "application/json"
    assert set(json.loads(response.body)) == {"error"} and b"Reindex" not in response.body


def test_an_unusable_state_is_a_503_with_a_one_line_reason(make_docroot, middleware, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    root = make_docroot(TASKS, f'[reqcron]\nstate_dir = "{blocker / "x"}"\n')
    app = middleware(the_app, root, status_path="/_reqcron", status_token=TOKEN)
    for path in ("/_reqcron/", "/_reqcron/metrics"):
        response = authed(app, path)
        assert response.status_int == 503, response.body
        reason = response.text
        assert reason.count("\n") == 1 and "cannot be used" in reason, reason
    data = authed(app, "/_reqcron/?format=json")
    assert data.status_int == 503 and data.content_type == "application/json"
    assert "cannot be used" in json.loads(data.body)["error"]
    assert get(app, "/").body == b"the app"


SERVER_APP = """
from reqcron import ReqCron

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the app"]

application = ReqCron(hello, {docroot!r}, status_path="/_reqcron", status_token={token!r})
"""

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium is not installed")
def test_a_real_browser_logs_in_runs_a_task_sees_it_in_the_history_and_signs_out(
        site, tmp_path, serve):
    pytest.importorskip("selenium")
    from realserver import BIN
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    (tmp_path / "app.py").write_text(textwrap.dedent(
        SERVER_APP.format(docroot=str(site), token=TOKEN)))
    from conftest import runtask

    runtask(site, "Broken")  # something in the history already
    # Enough history for two pages, and a full strip for Broken.
    add_runs(site, "Broken", ["ok", "failed", "skipped", "timeout", "missed", "ok"] * 10)
    server = serve(str(BIN / "gunicorn"), "--workers", "2", "--bind", "127.0.0.1:{port}",
                   "app:application")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        def stale(element):
            try:
                element.is_enabled()
            except WebDriverException:  # stale, or its document already gone
                return True
            return False

        def freeze():
            """Stop this page's 5 s reload: on a loaded machine it could come between
            finding an element and reading it (the reload itself is the page's, not ours)."""
            driver.execute_script("let id = window.setTimeout(() => {}, 0);"
                                  " while (id > 0) { window.clearTimeout(id); id--; }")

        driver.get(server.url + "_reqcron/")
        assert "Reindex" not in driver.page_source
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: "Run now" in driver.page_source, message="the page after login")
        freeze()

        row = driver.find_element(By.XPATH, "//tr[td/b[text()='Reindex']]")
        run_now = row.find_element(By.XPATH, ".//button[text()='Run now']")
        run_now.click()
        # The POST must be answered before the next driver.get(), which would cancel it.
        wait_for(lambda: stale(run_now), message="the page after Run now")

        def reindex_in_history():
            driver.get(server.url + "_reqcron/")
            return driver.find_elements(
                By.XPATH, "//table[@id='history']//tr[td[2][.='Reindex'] and "
                          "td[6][text()='ok']]")

        wait_for(reindex_in_history, timeout=20, interval=0.5,
                 message="the Reindex run in the page's history")
        freeze()
        shot = tmp_path / "status.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        if os.environ.get("REQCRON_SCREENSHOT"):  # to refresh docs/status.png by hand
            shutil.copy(shot, os.environ["REQCRON_SCREENSHOT"])
        # The Content-Security-Policy lets the page's own style and script run.
        body = driver.find_element(By.TAG_NAME, "body")
        assert body.value_of_css_property("background-color") == "rgba(246, 246, 244, 1)"
        refused = [e["message"] for e in driver.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert not refused

        # Each task's strip of latest runs is drawn (inline SVG, no script).
        strips = driver.find_elements(By.CSS_SELECTOR, "a.strip svg")
        assert len(strips) == 2 and all(s.size["width"] > 100 for s in strips)
        broken_bars = driver.find_elements(
            By.XPATH, "//tr[td/b[text()='Broken']]//*[local-name()='rect']")
        assert len(broken_bars) == 30
        assert broken_bars[-1].value_of_css_property("fill") == "rgb(22, 163, 74)"  # ok
        reindex_bars = driver.find_elements(
            By.XPATH, "//tr[td/b[text()='Reindex']]//*[local-name()='rect']")
        assert len(reindex_bars) >= 1

        def rows():
            return driver.find_elements(By.XPATH, "//table[@id='history']//tr[td]")

        def click(link_text):
            link = driver.find_element(By.LINK_TEXT, link_text)
            link.click()
            wait_for(lambda: stale(link), message=f"the page after {link_text!r}")
            wait_for(lambda: driver.execute_script("return document.readyState") == "complete",
                     message="the page loaded")
            freeze()

        assert len(rows()) == 50 and not driver.find_elements(By.LINK_TEXT, "← newer")
        newest_ids = [r.find_element(By.XPATH, "td[1]").text for r in rows()]
        click("older →")
        assert "before=" in driver.current_url and len(rows()) >= 12
        assert not set(newest_ids) & {r.find_element(By.XPATH, "td[1]").text for r in rows()}
        click("← newer")
        assert [r.find_element(By.XPATH, "td[1]").text for r in rows()] == newest_ids

        from selenium.webdriver.support.select import Select

        choose = Select(driver.find_element(By.CSS_SELECTOR, "select[name=task]"))
        choose.select_by_visible_text("Reindex")
        show = driver.find_element(By.XPATH, "//button[text()='Show']")
        show.click()
        wait_for(lambda: stale(show), message="the page after Show")
        freeze()
        assert "task=Reindex" in driver.current_url and "Runs of Reindex" in driver.page_source
        assert {r.find_element(By.XPATH, "td[2]").text for r in rows()} == {"Reindex"}
        strip = driver.find_element(By.XPATH, "//tr[td/b[text()='Broken']]//a[@class='strip']")
        strip.click()
        wait_for(lambda: stale(strip), message="the page after the Broken strip")
        freeze()
        assert "task=Broken" in driver.current_url
        assert {r.find_element(By.XPATH, "td[2]").text for r in rows()} == {"Broken"}
        assert len(rows()) == 50 and driver.find_elements(By.LINK_TEXT, "older →")
        refused = [e["message"] for e in driver.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert not refused

        driver.find_element(By.XPATH, "//button[text()='Sign out']").click()
        wait_for(lambda: driver.find_elements(By.NAME, "token"), message="the login form")
        assert "Signed out" in driver.page_source
        driver.get(server.url + "_reqcron/")
        assert driver.find_elements(By.NAME, "token") and "Reindex" not in driver.page_source
    finally:
        driver.quit()
        server.stop()
