"""ReqCron: the WSGI middleware.  The hot path, and a worker thread that does the rest.

Per request, when nothing is due, the middleware reads the monotonic clock
(a wall clock set back must not stall it) and compares it with a
per-process cached time: no I/O, no locks, nothing that grows with the
number of tasks.  When that time has come, the request only sets an Event;
a worker thread of this process then brings the engine up to date
(``Docroot.pulse()``: one small query, and a read of ``__tasks__.py`` in a
child process when it changed), claims due runs (``Docroot.due()``) and
spawns them.  Scheduling never raises into a request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import deferred
from .docroot import Docroot
from .logonce import LogOnce
from .records import Trigger
from .spawn import Spawner

if TYPE_CHECKING:
    from .status import StatusPage
    from .watch import Watcher


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_time = time.time
_mono = time.monotonic
_QUIET = 0.15  # seconds without file events before reloading: saves arrive in bursts
_RELOG = 600.0  # seconds before the same problem is logged again
_REQUEST_BUSY_TIMEOUT = 0.1  # on a locked database, skip: the next check retries
_MIN_GAP = 0.05  # seconds between two wakes, even while a claim keeps failing


_REAP_EVERY = 30.0  # seconds between looks for runs whose process died (on any host)


class _Site:
    """One DOCROOT served by this middleware, and this process's engine for it."""

    def __init__(self, path: str):
        self.path = path
        self.docroot: Docroot | None = None
        self.watched = False
        self.reaped = 0.0  # when this process last looked for dead runs


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


def _reset_if_alive(ref: weakref.ref[ReqCron]) -> None:
    middleware = ref()
    if middleware is not None:
        middleware._reset()


class ReqCron:
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
        self.app = app
        self._fixed = os.fspath(docroot) if docroot is not None else None
        self._poll = poll
        self._watch = watch
        self._sites: dict[str, _Site] = {}
        self._log_once = LogOnce(again_after=_RELOG)
        self._wake_at = 0.0
        self._status: StatusPage | None = None
        self._status_path = ""
        self._metrics_only = False
        if status_path and (status_token or metrics_token):
            if docroot is None:
                raise ValueError("the status page needs a fixed DOCROOT: "
                                 "ReqCron(app, docroot, status_path=..., status_token=...)")
            from .status import StatusPage

            self._status = StatusPage(os.fspath(docroot), status_path, status_token,
                                      metrics_token)
            self._status_path = self._status.path
            # Only a metrics token: the page stays off, its path the app's.
            self._metrics_only = not status_token
        # Deferred calls made during a request, per thread, until its response is sent.
        self._held: dict[int, list[tuple[Docroot, int]]] = {}
        self._held_lock = threading.Lock()
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_if_alive(ref))
        deferred.register(self)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if _mono() >= self._wake_at:
            self._wake(environ)
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

    # -- deferred calls ----------------------------------------------------------

    @property
    def fixed_docroot(self) -> str | None:
        """The DOCROOT given at creation, if any."""
        return self._fixed

    def docroot_for(self, environ: dict[str, Any]) -> str | None:
        """The DOCROOT this middleware serves ``environ``'s request for."""
        return self._fixed or environ.get("DOCUMENT_ROOT") or None

    def hold(self, run_id: int, engine: Docroot) -> None:
        """Keep call ``run_id`` back until this thread's response has been sent."""
        with self._held_lock:
            self._held.setdefault(threading.get_ident(), []).append((engine, run_id))

    def _after_response(self, result: Iterable[bytes]) -> Iterable[bytes]:
        thread = threading.get_ident()
        if thread not in self._held:
            return result
        return _ThenRelease(result, lambda: self._release(thread))

    def _release(self, thread: int) -> None:
        """Let the calls deferred on ``thread`` run, and start a task process for them now."""
        with self._held_lock:
            held = self._held.pop(thread, [])
        by_engine: dict[int, tuple[Docroot, list[int]]] = {}
        for engine, run_id in held:
            by_engine.setdefault(id(engine), (engine, []))[1].append(run_id)
        for engine, ids in by_engine.values():
            try:
                deferred.release(engine, ids)
            except Exception as exc:  # they run once the hold ends instead
                self._log_once(logging.ERROR, "reqcron: %s: cannot release deferred calls: %s",
                               engine.path, exc)
            try:
                # A call may name another DOCROOT (@delay(docroot=...)): tend it too.
                if not any(Path(p).resolve() == engine.path for p in self._sites):
                    self._sites[str(engine.path)] = _Site(str(engine.path))
                self._ensure_thread()
            except Exception as exc:
                self._log_once(logging.ERROR, "reqcron: cannot start deferred calls: %s", exc)
        self._requested = True
        self._event.set()

    def _is_status(self, path: str) -> bool:
        if self._metrics_only:
            return path.rstrip("/") == self._status_path.rstrip("/") + "/metrics"
        return path == self._status_path or path.startswith(self._status_path + "/")

    @property
    def docroot(self) -> Docroot | None:
        """The engine of the fixed DOCROOT in this process, once a request has created it."""
        site = self._sites.get(self._fixed or "")
        return site.docroot if site else None

    def _reset(self) -> None:
        """Start afresh: at creation, and in a child after fork() (gunicorn --preload).

        Threads, watchers and child handles do not survive a fork; the
        store re-opens its connection by itself.
        """
        self._wake_at = 0.0
        self._event = threading.Event()
        self._requested = False
        self._changed = 0.0
        self._thread: threading.Thread | None = None
        self._watcher: Watcher | None = None
        self._spawner = Spawner()
        self._stopping = False
        for site in self._sites.values():
            site.watched = False

    def _wake(self, environ: dict[str, Any]) -> None:
        """Hand the work to the worker thread; never raises, never blocks."""
        try:
            self._wake_at = _mono() + self._poll  # meanwhile requests pass straight through
            root = self._fixed or environ.get("DOCUMENT_ROOT")
            if not root:
                self._log_once(
                    logging.ERROR,
                    "reqcron: no DOCROOT given and no DOCUMENT_ROOT "
                    "in the request's environ; no tasks will run",
                )
                return
            if root not in self._sites:
                self._sites[root] = _Site(root)
            self._ensure_thread()
            self._requested = True
            self._event.set()
        except Exception as exc:
            self._log_once(logging.ERROR, "reqcron: cannot check the schedule: %s", exc)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="reqcron", daemon=True)
            self._thread.start()

    def _file_changed(self, _path: str) -> None:
        self._changed = time.monotonic()
        self._event.set()

    def _work(self) -> None:
        while not self._stopping:
            running = self._spawner.reap()
            # Wake up now and then while children run, to reap them.
            self._event.wait(timeout=1.0 if running else None)
            self._event.clear()
            if self._stopping:
                return
            while (quiet := self._changed + _QUIET - time.monotonic()) > 0:
                time.sleep(quiet)
            # Only a request starts runs: a file change (or a reap) just
            # refreshes, so every run's trigger is what really started it.
            requested, self._requested = self._requested, False
            earliest = _time() + self._poll
            for site in list(self._sites.values()):
                earliest = min(earliest, self._tend(site, requested))
            self._wake_at = _mono() + max(earliest - _time(), _MIN_GAP)

    def _tend(self, site: _Site, requested: bool) -> float:
        """Refresh, claim and spawn for one DOCROOT; return when to look again."""
        try:
            if site.docroot is None:
                site.docroot = Docroot(site.path, busy_timeout=_REQUEST_BUSY_TIMEOUT)
            doc = site.docroot
            if self._watch and not site.watched:
                if self._watcher is None:
                    from .watch import Watcher

                    self._watcher = Watcher(self._file_changed)
                site.watched = self._watcher.watch(str(doc.path))
            if requested:
                for claim in doc.due(Trigger.REQUEST):
                    self._spawner.start(doc, claim)
                for _ in range(doc.drainers_wanted()):
                    self._spawner.start_drainer(doc)
            else:
                doc.pulse()
            if time.monotonic() - site.reaped > _REAP_EVERY:
                site.reaped = time.monotonic()
                doc.reap()
            upcoming = doc.next_check()
            return upcoming if upcoming is not None else float("inf")
        except Exception as exc:
            self._log_once(logging.ERROR, "reqcron: %s: %s", site.path, exc,
                           key=f"{site.path}:{type(exc).__name__}:{exc}")
            return _time() + self._poll

    def close(self, timeout: float = 10.0) -> None:
        """Stop this process's worker and watcher; wait for the task processes it started."""
        self._stopping = True
        deferred.unregister(self)
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + timeout
        while self._spawner.reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        for site in self._sites.values():
            if site.docroot is not None:
                site.docroot.close()
