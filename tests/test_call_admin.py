"""The deferred-call queue steered by hand: `reqcron calls`, `cancel`, `retry`, and the same
buttons on the status page, on each store, with real task processes running the calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import STATUS_TOKEN, hello, reqcron_cmd
from test_deferred import drain
from webob import Request

from reqcron import Result
from reqcron.errors import ExitCode

JOBS = """\
import pathlib
from reqcron import delay

@delay(minutes=10)
def later(path):
    pathlib.Path(path).write_text("ran")

@delay
def send(flag):
    if pathlib.Path(flag).exists():
        raise RuntimeError("the mail server said no")
    return "sent"
"""


@pytest.fixture
def site(make_site, monkeypatch):
    root = make_site("from reqcron import Task\n")
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    return root


def calls(root: Path, *args: str) -> list[dict[str, Any]]:
    done = reqcron_cmd("calls", str(root), "--json", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_a_cancelled_call_never_runs_and_says_so(site, app_module, tmp_path):
    mod = app_module(JOBS)
    marker = tmp_path / "ran"
    result = mod.later(str(marker))
    (listed,) = calls(site, "--status", "queued")
    assert listed["id"] == result.id and listed["call"]["target"].endswith(":later")

    done = reqcron_cmd("cancel", str(site), str(result.id))
    assert done.returncode == 0 and "cancelled" in done.stdout, done.stderr
    assert result.status == "cancelled" and result.is_ready() and result.has_error
    assert result.result is None and result.error_message == "cancelled"
    assert calls(site, "--status", "queued") == []
    assert [c["status"] for c in calls(site)] == ["cancelled"]

    # Not even when its time comes, nor when a process drains the queue.
    assert reqcron_cmd("retry", str(site), str(result.id)).returncode == 0
    assert reqcron_cmd("cancel", str(site), str(result.id)).returncode == 0  # queued again
    drain(site)
    assert not marker.exists()
    again = reqcron_cmd("cancel", str(site), str(result.id))
    assert again.returncode == ExitCode.USAGE
    assert "is cancelled, not queued" in again.stderr and "Traceback" not in again.stderr
    missing = reqcron_cmd("cancel", str(site), "999999")
    assert missing.returncode == ExitCode.USAGE and "no deferred call with id 999999" in (
        missing.stderr)


def test_a_failed_call_retried_runs_again_and_its_result_follows(site, app_module, tmp_path):
    mod = app_module(JOBS)
    flag = tmp_path / "broken"
    flag.write_text("")
    result = mod.send(str(flag))
    drain(site)
    assert result.wait(30).status == "failed"
    early = reqcron_cmd("retry", str(site), str(result.id))  # allowed: it ended failed
    assert early.returncode == 0, early.stderr
    # A Result keeps a final outcome it read; a new one follows the call again.
    again = Result.get(site, result.id)
    assert again.status == "queued" and again.error_message is None
    flag.unlink()  # the mail server is back
    drain(site)
    assert again.wait(30).result == "sent"
    (row,) = calls(site)
    assert row["status"] == "ok" and row["error"] is None
    done = reqcron_cmd("retry", str(site), str(result.id))
    assert done.returncode == ExitCode.USAGE and "is ok" in done.stderr


def test_the_status_page_cancels_a_queued_call_and_retries_a_failed_one(
        site, app_module, tmp_path, middleware):
    mod = app_module(JOBS)
    waiting = mod.later(str(tmp_path / "ran"))
    flag = tmp_path / "broken"
    flag.write_text("")
    failed = mod.send(str(flag))
    drain(site)
    assert failed.wait(30).status == "failed" and waiting.status == "queued"
    app = middleware(hello, site, status_path="/_reqcron", status_token=STATUS_TOKEN)
    auth = {"Authorization": f"Bearer {STATUS_TOKEN}"}

    def post(**form: str) -> Any:
        return Request.blank("/_reqcron/action", POST=form, headers=auth).get_response(app)

    page = Request.blank("/_reqcron/", headers=auth).get_response(app).text
    assert ">Cancel<" in page and ">Retry<" in page
    csrf = json.loads(Request.blank("/_reqcron/?format=json",
                                    headers=auth).get_response(app).body)["csrf"]
    assert post(action="cancel", call=str(waiting.id)).status_int == 403  # no CSRF token
    assert post(action="cancel", call=str(waiting.id), csrf=csrf).status_int == 303
    assert waiting.status == "cancelled"
    refused = post(action="cancel", call=str(waiting.id), csrf=csrf)
    assert refused.status_int == 409 and b"not queued" in refused.body
    assert post(action="retry", call=str(failed.id), csrf=csrf).status_int == 303
    assert Result.get(site, failed.id).status == "queued"
    assert post(action="retry", call="x", csrf=csrf).status_int == 409
