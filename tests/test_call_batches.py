"""`deferred.map(...)`: many calls of one function stored in one write, each its own call:
held until the response, run once each, followed by its own Result; on each store, and
through a stalled PostgreSQL (the batch is spooled in flight, then stored once)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import hello, request, with_port
from test_deferred import drain

from reqcron import Docroot, set_eager

JOBS = """\
from reqcron import delay

@delay(retries=1)
def add(a, b):
    return a + b
"""


@pytest.fixture
def site(make_site, monkeypatch):
    root = make_site("from reqcron import Task\n")
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    return root


def test_a_batch_is_stored_as_many_calls_that_each_run_once(site, app_module):
    mod = app_module(JOBS)
    results = mod.add.map((i, 1) for i in range(300))
    assert len({r.id for r in results}) == 300 and all(r.status == "queued" for r in results)
    drain(site)
    assert [r.wait(60).result for r in results] == [i + 1 for i in range(300)]
    with Docroot(site) as doc:
        calls = doc.calls(limit=1000)
    assert len(calls) == 300 and all(json.loads(c.call or "{}")["retries"] == 1 for c in calls)
    assert mod.add.map([]) == []


def test_a_batch_made_during_a_request_is_held_until_its_response(site, app_module,
                                                                  middleware):
    mod = app_module(JOBS)
    results: list[Any] = []

    def app(environ, start_response):
        results.extend(mod.add.map([(1, 2), (3, 4), (5, 6)]))
        with Docroot(site) as doc:  # not due yet: held until the response has been sent
            held = [doc.get_run(r.id) for r in results]
        assert all(run.due > run.created + 10 for run in held)
        return hello(environ, start_response)

    mw = middleware(app, site)
    assert request(mw)[0] == "200 OK"
    assert [r.wait(60).result for r in results] == [3, 7, 11]


def test_a_batch_with_an_argument_that_is_not_json_stores_nothing(site, app_module):
    mod = app_module(JOBS)
    with pytest.raises(TypeError):
        mod.add.map([(1, 2), ({1, 2}, 3)])
    with Docroot(site) as doc:
        assert doc.calls() == []
    previous = set_eager(True)
    try:
        assert [r.result for r in mod.add.map([(1, 1), (2, 2)])] == [2, 4]
    finally:
        set_eager(previous)


def test_a_batch_deferred_while_postgresql_stalls_is_spooled_then_stored_once(
        make_docroot, app_module, middleware, monkeypatch, pg_url, proxy):
    url = with_port(pg_url, proxy.port)
    root = make_docroot("", f'[reqcron]\nstate = "{url}"\nsite = "shop"\n')
    monkeypatch.setenv("REQCRON_DOCROOT", str(root))
    mod = app_module(JOBS)
    results: list[Any] = []

    def app(environ, start_response):
        results.extend(mod.add.map([(i, i) for i in range(20)]))
        return hello(environ, start_response)

    mw = middleware(app, root)
    assert request(mw)[0] == "200 OK"  # connected, and the schema made
    assert [r.wait(60).result for r in results] == [2 * i for i in range(20)]
    results.clear()
    proxy.stall()
    try:
        assert request(mw)[0] == "200 OK"
        assert [r.status for r in results] == ["spooled"] * 20
    finally:
        proxy.restore()
    assert [r.wait(60).result for r in results] == [2 * i for i in range(20)]
    with Docroot(root) as doc:
        tokens = [json.loads(c.call or "{}").get("token") for c in doc.calls(limit=100)]
    assert len(tokens) == 40 and len(set(tokens)) == 40  # each stored once
