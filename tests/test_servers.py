"""Real servers: gunicorn with several workers (with and without --preload), waitress, uWSGI."""

from __future__ import annotations

import shutil
import sys
import textwrap

import pytest
from conftest import wait_for
from realserver import BIN, SLOT_TASKS, assert_each_slot_ran_once

APP = """
import os
from reqcron import ReqCron

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]

application = ReqCron(hello, {docroot!r})
"""


@pytest.fixture
def site(make_docroot, tmp_path):
    root = make_docroot(SLOT_TASKS)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(docroot=str(root))))
    return root


@pytest.mark.parametrize("preload", [False, True], ids=["fork-per-worker", "preload"])
def test_gunicorn_four_workers_run_each_slot_once(site, serve, preload):
    command = [
        str(BIN / "gunicorn"),
        "--workers",
        "4",
        "--bind",
        "127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        *(["--preload"] if preload else []),
        "app:application",
    ]
    server = serve(*command)
    seconds = 6
    pids = server.load(seconds)
    assert len(pids) >= 2, "the load did not reach several workers"
    assert_each_slot_ran_once(site, seconds)
    wait_for(
        lambda: not [p for p in server.descendants() if p[2] == "Z"],
        timeout=10,
        message="zombie task processes to be reaped",
    )


def test_waitress_runs_each_slot_once(site, serve):
    server = serve(str(BIN / "waitress-serve"), "--listen=127.0.0.1:{port}", "app:application")
    seconds = 4
    server.load(seconds, clients=4)
    assert_each_slot_ran_once(site, seconds)


@pytest.mark.skipif(
    not (BIN / "uwsgi").exists() and not shutil.which("uwsgi"), reason="uwsgi is not installed"
)
def test_uwsgi_runs_each_slot_once(site, serve):
    uwsgi = str(BIN / "uwsgi") if (BIN / "uwsgi").exists() else shutil.which("uwsgi")
    server = serve(
        uwsgi,
        "--http-socket",
        "127.0.0.1:{port}",
        "--processes",
        "2",
        "--module",
        "app:application",
        "--virtualenv",
        sys.prefix,
        "--die-on-term",
        "--master",
    )
    seconds = 4
    server.load(seconds, clients=4)
    assert_each_slot_ran_once(site, seconds)


def test_gunicorn_preload_with_a_postgresql_state_runs_each_slot_once(site, serve, pg_url):
    (site / "reqcron.toml").write_text(f'[reqcron]\nstate = "{pg_url}"\nsite = "preload"\n')
    server = serve(str(BIN / "gunicorn"), "--workers", "4", "--bind", "127.0.0.1:{port}",
                   "--graceful-timeout", "5", "--preload", "app:application")
    seconds = 6
    assert len(server.load(seconds)) >= 2, "the load did not reach several workers"
    assert_each_slot_ran_once(site, seconds)
