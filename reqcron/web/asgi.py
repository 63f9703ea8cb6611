"""ReqCronASGI: the middleware for ASGI 3 apps (Starlette, FastAPI, Django's ASGI handler).

The same engine as ReqCron (tender.py) behind an ASGI hot path: a
monotonic clock read and a compare per HTTP request, nothing awaited but
the app.  Lifespan and websocket scopes go to the app untouched and never
wake the worker.  The status page is the WSGI one, run in a thread
(asgi_bridge.py).

Deferred calls made during a request are held until its response body has
been sent (the last ``http.response.body``), at the latest until the app
returns or raises; the worker thread then releases them, since the event
loop must not wait on the database.  calls/serving.py finds the request by a
walk up the stack, which sees this middleware when the view runs on the
request's own coroutine (async views).  Sync views run in a threadpool
(Starlette's ``run_in_threadpool``, asgiref's ``sync_to_async``, so FastAPI
and Django) and Django runs every view in a task of its own: there the
stack ends in the pool or the task, and only a ContextVar, which both
propagate, says which request a call belongs to.  Setting and resetting
one, with a per-request object wrapping ``send``, takes what the
middleware adds to a request from ~1.1x to ~2.8x the cheapest wrapper's
(benchmarks/asgi_overhead.py; under a microsecond), so it is done only
once this process has deferred functions (a ``@delay`` function exists,
or a call was deferred): apps that never defer pay only the clock compare,
and apps that do have their calls held right in every framework.  A call
deferred outside any request found either way goes, unheld, to the one
middleware of the process (serving.where's rule).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..calls import serving
from .asgi_bridge import ASGIApp, Message, Receive, Scope, Send, path_info, serve_wsgi
from .tender import Tender, is_async_app

_mono = time.monotonic


class _Request:
    """One HTTP request while deferred calls are followed: its key, and the send that ends it."""

    __slots__ = ("middleware", "scope", "done", "_send")

    def __init__(self, middleware: ReqCronASGI, scope: Scope, send: Send):
        self.middleware, self.scope, self._send = middleware, scope, send
        self.done = False

    async def send(self, message: Message) -> None:
        await self._send(message)
        if (message["type"] == "http.response.body" and not message.get("more_body", False)
                and self.middleware._held):
            self.middleware._release_soon(id(self.scope))

    def serving(self) -> serving.Serving | None:
        if self.done:  # a thread or task that outlived its request
            return None
        return self.middleware, id(self.scope), self.middleware.fixed_docroot


class ReqCronASGI(Tender[ASGIApp]):
    """Wrap an ASGI 3 application to run the tasks of a DOCROOT as requests come.

    The DOCROOT is needed; the options are the Tender's constructor's,
    documented there (tender.py).
    """

    def _accept(self, app: ASGIApp, docroot: str | os.PathLike[str] | None) -> None:
        if not is_async_app(app):
            raise TypeError(f"ReqCronASGI wraps ASGI 3 applications (async def app(scope, "
                            f"receive, send)), and {app!r} is not one: wrap a WSGI "
                            "application with reqcron.ReqCron instead")
        if docroot is None:
            raise ValueError("ReqCronASGI needs a DOCROOT, as ASGI has no DOCUMENT_ROOT to "
                             "take it from: ReqCronASGI(app, '/srv/www')")

    def _ready(self) -> None:
        self._track = False  # set per request the ContextVar calls.serving reads
        # The status page, or the ContextVar (track_calls): not the fast path.
        self._slow = self._status is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (_mono() >= self._wake_at and scope["type"] == "http"
                and path_info(scope) != self._probe_path):
            self._wake(self._fixed)
        request = None
        if self._slow and scope["type"] == "http":  # inline: another coroutine costs ~100 ns
            if self._status is not None and self._status.serves(path_info(scope)):
                return await serve_wsgi(self._status, scope, receive, send)
            if self._track:
                request = _Request(self, scope, send)
                token = serving.current.set(request)
                send = request.send
        try:
            await self.app(scope, receive, send)
        finally:
            if request is not None:
                request.done = True
                serving.current.reset(token)
            if self._held:
                self._release_soon(id(scope))

    def track_calls(self) -> None:
        self._track = self._slow = True


def _serving(local: dict[str, Any]) -> serving.Serving:
    middleware: ReqCronASGI = local["self"]
    scope: Scope = local["scope"]
    if scope["type"] != "http":  # a websocket has no response to wait for
        return None, None, middleware.fixed_docroot
    return middleware, id(scope), middleware.fixed_docroot


serving.entry_point(ReqCronASGI.__call__, _serving)
