"""The status page's defences: framing, sessions, sign-out, throttling, origins, fork safety."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import threading
import time

import pytest
from conftest import STATUS_TOKEN, wait_for
from webob import Request

from reqcron.web.gate import FAILURES_PER_CLIENT, FAILURES_PER_PROCESS, SESSION_SECONDS, Throttle
from reqcron.web.status import StatusPage

TOKEN = STATUS_TOKEN
TASKS = """
from reqcron import Task

class Reindex(Task):
    def run(self):
        return "done"
"""


@pytest.fixture
def site(make_docroot):
    return make_docroot(TASKS)


def get(app, path, client="192.0.2.1", **kwargs):
    return Request.blank(path, environ={"REMOTE_ADDR": client}, **kwargs).get_response(app)


def authed(app, path, bearer=f"Bearer {TOKEN}", headers=None, **kwargs):
    return get(app, path, headers={"Authorization": bearer, **(headers or {})}, **kwargs)


def login(app, client="192.0.2.1"):
    """Sign in through the form; return the cookie ("name=value") and its session's CSRF."""
    response = get(app, "/_reqcron/login", client=client, POST={"token": TOKEN})
    assert response.status_int == 303
    cookie = response.headers["Set-Cookie"].split(";")[0]
    page = get(app, "/_reqcron/?format=json", client=client, headers={"Cookie": cookie})
    assert page.status_int == 200
    return cookie, json.loads(page.body)["csrf"]


def session_cookie(sid, expires, token=TOKEN):
    """A session cookie as the page signs it: id, expiry, HMAC of both keyed by the token."""
    mac = hmac.new(token.encode(), f"session:{sid}.{expires}".encode(), hashlib.sha256)
    return f"reqcron_session={sid}.{expires}.{mac.hexdigest()}"


def test_every_response_forbids_framing(status_app):
    cookie, csrf = login(status_app)
    responses = [
        get(status_app, "/_reqcron/"),  # 401 and the login form
        get(status_app, "/_reqcron/?format=json"),
        get(status_app, "/_reqcron/login", POST={"token": "wrong"}),
        get(status_app, "/_reqcron/login", POST={"token": TOKEN}),
        authed(status_app, "/_reqcron/"),
        authed(status_app, "/_reqcron/nothing-here"),
        authed(status_app, "/_reqcron/action"),
        authed(status_app, "/_reqcron/action", POST={"action": "run", "task": "Reindex"}),
        get(status_app, "/_reqcron/login", POST={"token": TOKEN},
            headers={"Origin": "http://evil.example"}),
        get(status_app, "/_reqcron/logout", headers={"Cookie": cookie}, POST={"csrf": csrf}),
    ]
    assert [r.status_int for r in responses] == [401, 401, 401, 303, 200, 404, 405, 403, 403, 200]
    for response in responses:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert get(status_app, "/elsewhere").headers.get("X-Frame-Options") is None  # the app's own


def test_the_policy_allows_the_page_its_own_style_and_script_and_nothing_else(status_app):
    page = authed(status_app, "/_reqcron/")
    policy = page.headers["Content-Security-Policy"]
    for tag in ("style", "script"):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page.text, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy and "unsafe" not in policy


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(status_app, scheme):
    page = authed(status_app, "/_reqcron/", bearer=f"{scheme} {TOKEN}")
    assert page.status_int == 200 and b"Reindex" in page.body


def test_json_without_the_token_is_a_json_401(status_app):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = get(status_app, "/_reqcron/?format=json", headers=headers)
        assert response.status_int == 401
        assert response.content_type == "application/json"
        assert set(json.loads(response.body)) == {"error"}
        assert b"Reindex" not in response.body


def test_each_login_is_its_own_session_with_its_own_csrf(status_app, site, docroot):
    first, first_csrf = login(status_app)
    second, second_csrf = login(status_app)
    assert first != second and first_csrf != second_csrf
    bearer_csrf = json.loads(authed(status_app, "/_reqcron/?format=json").body)["csrf"]
    assert bearer_csrf not in (first_csrf, second_csrf)
    crossed = get(status_app, "/_reqcron/action", headers={"Cookie": first},
                  POST={"action": "disable", "task": "Reindex", "csrf": second_csrf})
    assert crossed.status_int == 403 and docroot(site).is_enabled("Reindex")
    own = get(status_app, "/_reqcron/action", headers={"Cookie": first},
              POST={"action": "disable", "task": "Reindex", "csrf": first_csrf})
    assert own.status_int == 303 and not docroot(site).is_enabled("Reindex")


def test_a_session_cookie_expires(status_app):
    response = get(status_app, "/_reqcron/login", POST={"token": TOKEN})
    cookie = response.headers["Set-Cookie"]
    assert f"Max-Age={SESSION_SECONDS}" in cookie
    sid, expires, _ = cookie.split(";")[0].split("=", 1)[1].split(".")
    assert abs(int(expires) - (time.time() + SESSION_SECONDS)) < 60
    assert session_cookie(sid, expires) == cookie.split(";")[0]  # signed as described
    past = str(int(time.time()) - 1)
    for stale in (session_cookie(sid, past),                      # expired
                  cookie.split(";")[0].replace(expires, str(int(expires) + 3600)),  # stretched
                  session_cookie(sid, expires, token="another token"),  # signed by another
                  session_cookie(sid, "9" * 5000), session_cookie(sid, "\u00b2"),  # not times
                  "reqcron_session=..", "reqcron_session=x"):
        assert get(status_app, "/_reqcron/", headers={"Cookie": stale}).status_int == 401
    assert get(status_app, "/_reqcron/", headers={"Cookie": cookie.split(";")[0]}).status_int == 200


def test_sign_out_clears_the_cookie_and_ends_the_session(status_app):
    cookie, csrf = login(status_app)
    assert get(status_app, "/_reqcron/", headers={"Cookie": cookie}).text.count("Sign out") == 1
    assert get(status_app, "/_reqcron/logout", headers={"Cookie": cookie}).status_int == 405
    no_csrf = get(status_app, "/_reqcron/logout", headers={"Cookie": cookie}, POST={})
    assert no_csrf.status_int == 403
    out = get(status_app, "/_reqcron/logout", headers={"Cookie": cookie}, POST={"csrf": csrf})
    assert out.status_int == 200 and 'name="token"' in out.text and "Signed out" in out.text
    cleared = out.headers["Set-Cookie"]
    assert cleared.startswith("reqcron_session=;") and "Max-Age=0" in cleared
    assert "Path=/_reqcron" in cleared
    replayed = get(status_app, "/_reqcron/", headers={"Cookie": cookie})  # same process
    assert replayed.status_int == 401 and b"Reindex" not in replayed.body
    other, _ = login(status_app)
    assert get(status_app, "/_reqcron/", headers={"Cookie": other}).status_int == 200


def test_wrong_login_tokens_are_throttled_per_client(status_app):
    for _ in range(FAILURES_PER_CLIENT):
        assert get(status_app, "/_reqcron/login", POST={"token": "guess"}).status_int == 401
    for token in ("guess", TOKEN):  # no longer checked at all
        refused = get(status_app, "/_reqcron/login", POST={"token": token})
        assert refused.status_int == 429 and "Set-Cookie" not in refused.headers
        assert 0 < int(refused.headers["Retry-After"]) <= 300
    assert get(status_app, "/_reqcron/login", client="192.0.2.2",
               POST={"token": TOKEN}).status_int == 303


def test_wrong_bearer_tokens_are_throttled_too(status_app):
    cookie, _ = login(status_app)
    for _ in range(FAILURES_PER_CLIENT):
        assert authed(status_app, "/_reqcron/", bearer="Bearer guess").status_int == 401
    refused = authed(status_app, "/_reqcron/?format=json")
    assert refused.status_int == 429 and int(refused.headers["Retry-After"]) > 0
    assert json.loads(refused.body)["error"] and b"Reindex" not in refused.body
    assert get(status_app, "/_reqcron/login", POST={"token": TOKEN}).status_int == 429
    # a session won before keeps working: it proves the token without a guess
    assert get(status_app, "/_reqcron/", headers={"Cookie": cookie}).status_int == 200


def test_a_process_wide_cap_stops_guesses_spread_over_addresses(status_app):
    for i in range(FAILURES_PER_PROCESS):
        client = f"10.0.{i // 250}.{i % 250}"
        assert get(status_app, "/_reqcron/login", client=client,
                   POST={"token": "guess"}).status_int == 401
    fresh = get(status_app, "/_reqcron/login", client="198.51.100.7", POST={"token": TOKEN})
    assert fresh.status_int == 429 and int(fresh.headers["Retry-After"]) > 0


def test_the_throttle_forgets_failures_after_its_window():
    throttle = Throttle(per_client=2, total=3, window=60)
    throttle.failed("a", now=100)
    throttle.failed("a", now=110)
    assert throttle.wait("a", now=120) == 40  # until the failure at 100 is a minute old
    assert throttle.wait("b", now=120) == 0
    throttle.failed("b", now=130)
    assert throttle.wait("c", now=130) == 30  # three in all: everyone waits
    assert throttle.wait("a", now=160) == 0 and throttle.wait("c", now=160) == 0
    throttle.succeeded("b")
    throttle.failed("a", now=170)
    assert throttle.wait("a", now=170) == 0  # one left within the minute (110 went at 170)
    throttle.failed("a", now=171)
    assert throttle.wait("a", now=171) == 59


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "https://localhost"},        # another scheme
    {"Origin": "http://localhost:8080"},    # another port
    {"Referer": "http://evil.example/_reqcron/"},
    {"Origin": "http://evil.example", "Referer": "http://localhost/_reqcron/"},
])
def test_posts_from_another_origin_are_refused(status_app, site, headers, docroot):
    cookie, csrf = login(status_app)
    forged = get(status_app, "/_reqcron/login", headers=headers, POST={"token": TOKEN})
    assert forged.status_int == 403 and "Set-Cookie" not in forged.headers
    action = get(status_app, "/_reqcron/action", headers={"Cookie": cookie, **headers},
                 POST={"action": "disable", "task": "Reindex", "csrf": csrf})
    assert action.status_int == 403 and docroot(site).is_enabled("Reindex")
    bearer = authed(status_app, "/_reqcron/action", headers=headers,
                    POST={"action": "disable", "task": "Reindex", "csrf": csrf})
    assert bearer.status_int == 403 and docroot(site).is_enabled("Reindex")
    logout = get(status_app, "/_reqcron/logout", headers={"Cookie": cookie, **headers},
                 POST={"csrf": csrf})
    assert logout.status_int == 403
    assert get(status_app, "/_reqcron/", headers={"Cookie": cookie}).status_int == 200


def test_posts_from_the_page_itself_pass_where_another_origin_is_refused(status_app, site, docroot):
    cookie, csrf = login(status_app)
    same = [{},  # not a browser
            {"Origin": "http://localhost"}, {"Origin": "http://LOCALHOST:80"},
            {"Referer": "http://localhost/_reqcron/"}]
    for headers, action in zip(same, ["disable", "enable"] * 2, strict=True):
        assert get(status_app, "/_reqcron/login", headers=headers,
                   POST={"token": TOKEN}).status_int == 303
        done = get(status_app, "/_reqcron/action", headers={"Cookie": cookie, **headers},
                   POST={"action": action, "task": "Reindex", "csrf": csrf})
        assert done.status_int == 303
        assert docroot(site).is_enabled("Reindex") == (action == "enable")
    refused = get(status_app, "/_reqcron/action", headers={"Cookie": cookie,
                                                            "Origin": "http://localhost:81"},
                  POST={"action": "disable", "task": "Reindex", "csrf": csrf})
    assert refused.status_int == 403 and docroot(site).is_enabled("Reindex")


def test_a_fork_while_another_thread_holds_the_lock_leaves_the_child_a_working_page(site):
    # The page alone: the middleware's own threads would be inside SQLite at
    # the fork now and then, and SQLite's mutexes are not the page's to re-make.
    page = StatusPage(str(site), "/_reqcron", TOKEN)
    assert authed(page, "/_reqcron/").status_int == 200
    held, release = threading.Event(), threading.Event()

    def hold():
        with page._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                code = 0 if authed(page, "/_reqcron/?format=json").status_int == 200 else 2
            finally:
                os._exit(code)
        ended = []

        def child_ended():
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended.append(os.waitstatus_to_exitcode(status))
            return done

        try:
            wait_for(child_ended, timeout=30, message="the forked child to serve the page")
        finally:
            if not ended:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        assert ended == [0]
    finally:
        release.set()
        thread.join()
        page.close()
