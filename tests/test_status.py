"""The status page: opt-in, auth, CSRF, escaping, JSON, and a real browser clicking "Run now"."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for
from webob import Request

from reqcron import Docroot, ReqCron

TOKEN = "s3cret-token"
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


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the app"]


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS)


@pytest.fixture
def app(site):
    wrapped = ReqCron(hello, site, status_path="/_reqcron", status_token=TOKEN)
    yield wrapped
    wrapped.close()


def get(app, path, **kwargs):
    return Request.blank(path, **kwargs).get_response(app)


def authed(app, path, **kwargs):
    headers = kwargs.pop("headers", {})
    headers["Authorization"] = f"Bearer {TOKEN}"
    return get(app, path, headers=headers, **kwargs)


def test_off_by_default(site):
    for kwargs in ({}, {"status_path": "/_reqcron"}, {"status_token": TOKEN}):
        wrapped = ReqCron(hello, site, **kwargs)
        assert get(wrapped, "/_reqcron/").body == b"the app"
        wrapped.close()


def test_without_the_token_401_and_nothing_revealed(app):
    for path in ("/_reqcron", "/_reqcron/", "/_reqcron/?format=json"):
        response = get(app, path)
        assert response.status_int == 401
        assert b"Reindex" not in response.body and b"Broken" not in response.body
    wrong = get(app, "/_reqcron/", headers={"Authorization": "Bearer nope"})
    assert wrong.status_int == 401
    assert get(app, "/elsewhere").body == b"the app"


def test_bearer_token_shows_tasks_and_json(app):
    page = authed(app, "/_reqcron/")
    assert page.status_int == 200 and b"Reindex" in page.body and b"Run now" in page.body
    data = json.loads(authed(app, "/_reqcron/?format=json").body)
    assert {t["name"] for t in data["tasks"]} == {"Reindex", "Broken"}
    assert data["csrf"]


def test_error_text_is_escaped(app, site):
    from conftest import runtask

    assert runtask(site, "Broken").returncode == 1
    assert runtask(site, "Reindex").returncode == 0
    body = authed(app, "/_reqcron/").text
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in body
    assert "reindexed &lt;everything&gt;" in body


def test_actions_need_post_and_csrf(app, site):
    csrf = json.loads(authed(app, "/_reqcron/?format=json").body)["csrf"]
    assert authed(app, "/_reqcron/action?action=run&task=Reindex").status_int == 405
    no_csrf = authed(app, "/_reqcron/action", POST={"action": "disable", "task": "Reindex"})
    assert no_csrf.status_int == 403
    assert Docroot(site).is_enabled("Reindex")
    ok = authed(app, "/_reqcron/action", POST={"action": "disable", "task": "Reindex",
                                                "csrf": csrf})
    assert ok.status_int == 303
    assert not Docroot(site).is_enabled("Reindex")
    unknown = authed(app, "/_reqcron/action", POST={"action": "run", "task": "../x",
                                                     "csrf": csrf})
    assert unknown.status_int == 404 and b"known tasks" in unknown.body


def test_login_form_sets_a_strict_httponly_cookie(app):
    bad = get(app, "/_reqcron/login", POST={"token": "wrong"})
    assert bad.status_int == 401
    good = get(app, "/_reqcron/login", POST={"token": TOKEN})
    assert good.status_int == 303
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    page = get(app, "/_reqcron/", headers={"Cookie": value})
    assert page.status_int == 200 and b"Reindex" in page.body


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
        site, tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from test_servers import Server, free_port

    (tmp_path / "app.py").write_text(textwrap.dedent(
        SERVER_APP.format(docroot=str(site), token=TOKEN)))
    from conftest import runtask

    runtask(site, "Broken")  # something in the history already
    port = free_port()
    server = Server([str(Path(__import__("sys").executable).parent / "gunicorn"), "--workers",
                     "2", "--bind", f"127.0.0.1:{port}", "app:application"], tmp_path, port)
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
        driver.get(server.url + "_reqcron/")
        assert "Reindex" not in driver.page_source
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: "Run now" in driver.page_source, message="the page after login")

        def stale(element):
            try:
                element.is_enabled()
            except WebDriverException:  # stale, or its document already gone
                return True
            return False

        row = driver.find_element(By.XPATH, "//tr[td/b[text()='Reindex']]")
        run_now = row.find_element(By.XPATH, ".//button[text()='Run now']")
        run_now.click()
        # The POST must be answered before the next driver.get(), which would cancel it.
        wait_for(lambda: stale(run_now), message="the page after Run now")

        def reindex_in_history():
            driver.get(server.url + "_reqcron/")
            return driver.find_elements(
                By.XPATH, "//table[@id='history']//tr[td[2][text()='Reindex'] and "
                          "td[6][text()='ok']]")

        wait_for(reindex_in_history, timeout=20, interval=0.5,
                 message="the Reindex run in the page's history")
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

        driver.find_element(By.XPATH, "//button[text()='Sign out']").click()
        wait_for(lambda: driver.find_elements(By.NAME, "token"), message="the login form")
        assert "Signed out" in driver.page_source
        driver.get(server.url + "_reqcron/")
        assert driver.find_elements(By.NAME, "token") and "Reindex" not in driver.page_source
    finally:
        driver.quit()
        server.stop()
