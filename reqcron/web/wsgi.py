"""ReqCron: the WSGI middleware.  Its hot path; the rest is the Tender's (tender.py).

Per request, when nothing is due, the middleware reads the monotonic clock
(a wall clock set back must not stall it) and compares it with a
per-process cached time: no I/O, no locks, nothing that grows with the
number of tasks.  When that time has come, the request only wakes the
worker thread, which claims and spawns off the request path.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..calls import serving
from .tender import Tender, is_async_app

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_mono = time.monotonic


class _ThenRelease:
    """The app's response, unchanged, with a last step once the server has sent it."""

    def __init__(self, result: Iterable[bytes], then: Callable[[], None]):
        self._result = result
        self._then = then

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._then()


class ReqCron(Tender):
    """Wrap a WSGI application to run the tasks of a DOCROOT as requests come."""

    def __init__(
        self,
        app: WSGIApp,
        docroot: str | os.PathLike[str] | None = None,
        *,
        # Seconds between looks at the shared state while requests come: how
        # soon a run_now() or a change made by another process is seen.
        poll: float = 1.0,
        # Reload __tasks__.py and reqcron.toml as soon as they change, through
        # watchdog.  Off, or where no observer can start, a cheap stat at each
        # look (at most once per ``poll``) still picks changes up.
        watch: bool = True,
        # Serve the status page at this path (e.g. "/_reqcron"); off unless
        # both this and status_token are given.  Needs a fixed DOCROOT.
        status_path: str | None = None,
        # The secret that opens the status page (Bearer header or login form).
        status_token: str | None = None,
        # A secret that opens {status_path}/metrics (Prometheus text) and
        # nothing else, for a scraper; status_token opens the metrics too.
        metrics_token: str | None = None,
    ):
        if is_async_app(app):
            raise TypeError(f"ReqCron wraps WSGI applications, and {app!r} is an ASGI one "
                            "(it is async): wrap it with reqcron.asgi.ReqCronASGI instead")
        self.app = app
        super().__init__(docroot, poll=poll, watch=watch, status_path=status_path,
                         status_token=status_token, metrics_token=metrics_token)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if _mono() >= self._wake_at:
            self._wake(self._fixed or environ.get("DOCUMENT_ROOT"))
        if self._status is not None and self._is_status(environ.get("PATH_INFO", "")):
            return self._status(environ, start_response)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            if self._held:
                self._release(threading.get_ident())
            raise
        if self._held:  # a call was deferred, in this request or another thread's
            return self._after_response(result)
        return result

    def docroot_for(self, environ: dict[str, Any]) -> str | None:
        """The DOCROOT this middleware serves ``environ``'s request for."""
        return self._fixed or environ.get("DOCUMENT_ROOT") or None

    def _after_response(self, result: Iterable[bytes]) -> Iterable[bytes]:
        thread = threading.get_ident()
        if thread not in self._held:
            return result
        return _ThenRelease(result, lambda: self._release(thread))


def _serving(local: dict[str, Any]) -> serving.Serving:
    middleware: ReqCron = local["self"]
    return middleware, threading.get_ident(), middleware.docroot_for(local["environ"])


serving.entry_point(ReqCron.__call__, _serving)
