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


class ReqCron(Tender[WSGIApp]):
    """Wrap a WSGI application to run the tasks of a DOCROOT as requests come.

    The DOCROOT, else each request's ``DOCUMENT_ROOT``; the options are the
    Tender's constructor's, documented there (tender.py).
    """

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if _mono() >= self._wake_at and environ.get("PATH_INFO") != self._probe_path:
            self._wake(self._fixed or environ.get("DOCUMENT_ROOT"))
        if self._status is not None and self._status.serves(environ.get("PATH_INFO", "")):
            return self._status(environ, start_response)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._release_this_thread()
            raise
        return self._after_response(result) if self._held else result

    def _accept(self, app: WSGIApp, docroot: str | os.PathLike[str] | None) -> None:
        if is_async_app(app):
            raise TypeError(f"ReqCron wraps WSGI applications, and {app!r} is an ASGI one "
                            "(it is async): wrap it with reqcron.asgi.ReqCronASGI instead")

    def docroot_for(self, environ: dict[str, Any]) -> str | None:
        """The DOCROOT this middleware serves ``environ``'s request for."""
        return self._fixed or environ.get("DOCUMENT_ROOT") or None

    def _after_response(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """``result``, releasing this thread's held calls once it has been sent, if any."""
        thread = threading.get_ident()
        if thread not in self._held:  # another thread's, or none left
            return result
        return _ThenRelease(result, lambda: self._release_soon(thread))

    def _release_this_thread(self) -> None:
        """The app raised: let the calls it deferred go now."""
        if self._held:
            self._release_soon(threading.get_ident())


def _serving(local: dict[str, Any]) -> serving.Serving:
    middleware: ReqCron = local["self"]
    return middleware, threading.get_ident(), middleware.docroot_for(local["environ"])


serving.entry_point(ReqCron.__call__, _serving)
