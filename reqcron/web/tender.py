"""Tender: what the WSGI and ASGI middlewares share, everything but their hot paths.

A request that finds the wake time passed calls ``_wake()``, which only
sets an Event; a worker thread of this process then brings the engine up
to date (``Docroot.pulse()``: one small query, and a read of
``__tasks__.py`` in a child process when it changed), claims due runs
(``Docroot.due()``) and spawns them.  Deferred calls made during a request
are held under a key of the request (its thread under WSGI, its scope under
ASGI) until its response has been sent.  Scheduling never raises into a
request.  The subclasses (``wsgi.ReqCron``, ``asgi.ReqCronASGI``) own
only the per-request check, so each can keep it as cheap as its protocol
allows: they read ``_wake_at`` and ``_held`` as plain attributes of self.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..calls import delay as deferred
from ..calls import serving
from ..engine import registry
from ..engine.docroot import Docroot
from ..logonce import LogOnce
from ..records import Trigger
from ..run.spawn import Spawner

if TYPE_CHECKING:
    from ..calls.budget import Write
    from .status import StatusPage
    from .watch import Watcher

log = logging.getLogger("reqcron")
_time = time.time
_mono = time.monotonic
_QUIET = 0.15  # seconds without file events before reloading: saves arrive in bursts
_RELOG = 600.0  # seconds before the same problem is logged again
_MIN_GAP = 0.05  # seconds between two wakes, even while a claim keeps failing
_REAP_EVERY = 30.0  # seconds between looks for runs whose process died (on any host)
#: Seconds without a look after which the worker lets go of its database connections (the
#: next look opens them again): a quiet site holds no PostgreSQL session.
IDLE_CLOSE = 60.0

# (engine, the call's id, or its write still going on when the request went on)
Held = list[tuple[Docroot, "int | Write"]]


class _Site:
    """One DOCROOT served by this middleware, and this process's engine for it."""

    def __init__(self, path: str):
        self.path = path
        self.docroot: Docroot | None = None
        self.watched = False
        self.reaped = 0.0  # when this process last looked for dead runs


def _reset_if_alive(ref: weakref.ref[Tender[Any]]) -> None:
    tender = ref()
    if tender is not None:
        tender._reset()


def _ticker(ref: weakref.ref[Tender[Any]]) -> Callable[[], None]:
    """Wake the middleware's worker for its DOCROOT (a health probe's tick), if it lives."""

    def tick() -> None:
        tender = ref()
        if tender is not None:
            tender._wake(tender._fixed)

    return tick


def _cause(root: str, exc: Exception) -> str:
    """What makes a problem with DOCROOT ``root`` the same one, for logging it once."""
    return f"{root}:{type(exc).__name__}:{exc}"


def is_async_app(app: object) -> bool:
    """True for an ASGI 3 app: an async function, or an object whose ``__call__`` is one."""
    import inspect  # only at construction: the hot paths never need it

    if inspect.isclass(app):  # an ASGI 2 class, or a WSGI class: neither is callable per request
        return False
    call = inspect.getattr_static(app, "__call__", None)
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


App = TypeVar("App")


class Tender(Generic[App]):
    """The engine of the DOCROOTs a middleware serves: wake, tend, spawn, hold calls.

    The constructor, and with it every option, is the two middlewares' own;
    each refuses an app of the other protocol (``_accept``) and sets up its
    hot path (``_ready``).
    """

    def __init__(
        self,
        app: App,
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
        self._accept(app, docroot)
        self.app = app
        self._fixed = os.fspath(docroot) if docroot is not None else None
        self._poll = poll
        self._watch = watch
        self._sites: dict[str, _Site] = {}
        self._log_once = LogOnce(again_after=_RELOG)
        self._wake_at = 0.0
        self._status: StatusPage | None = None
        if status_path and not status_path.startswith("/"):
            raise ValueError(f"status_path must start with '/', like '/_reqcron', not "
                             f"{status_path!r}")
        if bool(status_path) != bool(status_token or metrics_token):
            log.warning("reqcron: the status page is off: it needs both status_path and "
                        "status_token (or metrics_token)")
        if status_path and (status_token or metrics_token):
            if docroot is None:
                raise ValueError(f"the status page needs a fixed DOCROOT: {type(self).__name__}"
                                 "(app, docroot, status_path=..., status_token=...)")
            from .status import StatusPage

            self._status = StatusPage(os.fspath(docroot), status_path, status_token,
                                      metrics_token, tick=_ticker(weakref.ref(self)))
        # A health probe reads the state first and ticks after (status.py), not before.
        # Without a status page, a path no request has (NUL never is in one): an environ
        # without PATH_INFO (None) must not pass for the probe and skip the check.
        self._probe_path = (self._status.health_path if self._status is not None
                            else "\0no probe")
        # Deferred calls made during a request, per request key, until its response is sent.
        self._held: dict[Hashable, Held] = {}
        if self._fixed is not None:
            self._check_docroot(self._fixed)
        self._reset()
        self._ready()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_if_alive(ref))
        serving.register(self)

    def _check_docroot(self, root: str) -> None:
        """Log at once a DOCROOT that cannot be one: else each worker would stay silent
        until its first request.  The app is served all the same."""
        from ..errors import DocrootError
        from ..paths import docroot_path

        try:
            docroot_path(root)
        except DocrootError as exc:
            # The key _tend() logs it under: a worker's first request does not repeat it.
            self._log_once(logging.ERROR, "reqcron: %s; no task will run from it (requests are "
                           "served as usual)", exc, key=_cause(root, exc))

    def _accept(self, app: App, docroot: str | os.PathLike[str] | None) -> None:
        """Raise if this middleware cannot wrap ``app`` (an app of the other protocol)."""

    def _ready(self) -> None:
        """Set up the hot path once the rest is, before calls can be followed."""

    # -- what calls/serving.py asks ----------------------------------------------

    @property
    def fixed_docroot(self) -> str | None:
        """The DOCROOT given at creation, if any."""
        return self._fixed

    def hold(self, run_id: int | Write, engine: Docroot, key: Hashable) -> None:
        """Keep call ``run_id`` back until the response of request ``key`` has been sent."""
        with self._held_lock:
            self._held.setdefault(key, []).append((engine, run_id))

    def track_calls(self) -> None:
        """The process defers calls: a subclass may start following them per request."""

    # -- releasing held calls ----------------------------------------------------

    def _take(self, key: Hashable) -> Held:
        with self._held_lock:
            return self._held.pop(key, [])

    def _release_soon(self, key: Hashable) -> None:
        """Let the calls held for ``key`` run: the worker thread writes and starts a process.

        Never on the request's thread: a stalled state must not hold a server's worker
        (nor an event loop) after the response.
        """
        held = self._take(key)
        if held:
            with self._held_lock:
                self._releasing.extend(held)
            try:
                self._ensure_thread()
            except Exception as exc:  # the calls still run when their hold times out
                self._log_once(logging.ERROR, "reqcron: cannot start deferred calls: %s", exc)
            self._event.set()

    def _let_go(self, held: Held, *, start: bool = True) -> None:
        by_engine: dict[int, tuple[Docroot, list[int | Write]]] = {}
        for engine, run_id in held:
            by_engine.setdefault(id(engine), (engine, []))[1].append(run_id)
        for engine, ids in by_engine.values():
            try:
                deferred.release(engine, ids)
            except Exception as exc:  # they run once the hold ends instead
                self._log_once(logging.ERROR, "reqcron: %s: cannot release deferred calls: %s",
                               engine.path, exc)
            if not start:
                continue
            try:
                # A call may name another DOCROOT (@delay(docroot=...)): tend it too.
                if not any(Path(p).resolve() == engine.path for p in self._sites):
                    self._sites[str(engine.path)] = _Site(str(engine.path))
                self._ensure_thread()
            except Exception as exc:
                self._log_once(logging.ERROR, "reqcron: cannot start deferred calls: %s", exc)
        self._requested = True
        self._event.set()

    # -- the worker --------------------------------------------------------------

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
        self._releasing: Held = []
        # A lock another thread held at fork() would never be released in the child.
        self._held_lock = threading.Lock()
        for site in self._sites.values():
            site.watched = False

    def _wake(self, root: str | None) -> None:
        """Hand the work for DOCROOT ``root`` to the worker thread; never raises, never blocks."""
        try:
            self._wake_at = _mono() + self._poll  # meanwhile requests pass straight through
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
            if not self._event.wait(timeout=1.0 if running else IDLE_CLOSE) and not running:
                self._idle()
                continue
            self._event.clear()
            if self._stopping:
                return
            with self._held_lock:
                releasing, self._releasing = self._releasing, []
            if releasing:
                self._let_go(releasing)
            while (quiet := self._changed + _QUIET - time.monotonic()) > 0:
                time.sleep(quiet)
            # Only a request starts runs: a file change (or a reap) just
            # refreshes, so every run's trigger is what really started it.
            requested, self._requested = self._requested, False
            earliest = _time() + self._poll
            for site in list(self._sites.values()):
                earliest = min(earliest, self._tend(site, requested))
            self._wake_at = _mono() + max(earliest - _time(), _MIN_GAP)

    def _idle(self) -> None:
        """Nothing to do for a while: close the engines' connections until the next look."""
        for site in list(self._sites.values()):
            if site.docroot is not None:
                site.docroot.close()

    def _tend(self, site: _Site, requested: bool) -> float:
        """Refresh, claim and spawn for one DOCROOT; return when to look again."""
        try:
            if site.docroot is None:
                site.docroot = registry.hold(site.path)
            doc = site.docroot
            if self._watch and not site.watched:
                if self._watcher is None:
                    from .watch import Watcher

                    self._watcher = Watcher(self._file_changed)
                site.watched = self._watcher.watch(str(doc.path))
            if requested:
                for claim in doc.due(Trigger.REQUEST):
                    self._spawner.start(doc, claim)
                for _ in range(doc.drainers_wanted(mine=self._spawner.drainers(doc))):
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
                           key=_cause(site.path, exc))
            return _time() + self._poll

    def close(self, timeout: float = 10.0) -> None:
        """Stop this process's worker and watcher; wait for the task processes it started."""
        self._stopping = True
        serving.unregister(self)
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._held_lock:
            releasing, self._releasing = self._releasing, []
        if releasing:  # the worker stopped before it got to them: due now, for the next check
            self._let_go(releasing, start=False)
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + timeout
        while self._spawner.reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._spawner.leave_running()  # those still going past the timeout finish alone
        for site in self._sites.values():
            if site.docroot is not None:
                registry.let_go(site.docroot)
                site.docroot = None
        if self._status is not None:
            self._status.close()
