"""The one engine per DOCROOT of this process, shared by every surface in it.

The middleware's worker, its status page and metrics, ``@delay`` and
``Result``, a task process's bookkeeping and the commands all ask here, so
one process holds one connection per DOCROOT and follows a changed
``reqcron.toml`` in one place.  Whoever keeps an engine for a while (a
middleware) takes a hold and lets go when it closes; the last to let go
closes the engine.  Engines used without a hold (``@delay`` in a script)
are closed by ``close_all()``, at the latest when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

from .docroot import Docroot

# Seconds a request's thread waits on a locked SQLite state before it skips:
# the next check retries, and a request is never held up for longer.
REQUEST_BUSY_TIMEOUT = 0.1
# Elsewhere (commands, task processes) waiting a while beats failing.
BACKGROUND_BUSY_TIMEOUT = 5.0

_lock = threading.Lock()
_engines: dict[str, Docroot] = {}
_holds: dict[str, int] = {}
#: Seconds a path's real path is trusted: a burst of deferred calls resolves it once,
#: and a symlink switched by a deploy is followed within this long.
RESOLVED_FOR = 1.0
_resolved: dict[str, tuple[str, float]] = {}


def _key(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    clock = time.monotonic()
    known = _resolved.get(text)
    if known is not None and clock < known[1]:
        return known[0]
    real = os.path.realpath(text)
    if len(_resolved) > 100:  # a process names few DOCROOTs; never grow without end
        _resolved.clear()
    _resolved[text] = (real, clock + RESOLVED_FOR)
    return real


def engine(path: str | os.PathLike[str], *, busy_timeout: float = REQUEST_BUSY_TIMEOUT,
           log_load_errors: bool = True) -> Docroot:
    """This process's engine for the DOCROOT at ``path``, made on first use.

    The first caller's options make it: in a web process that is the
    request path's short busy timeout, in a command or a task process the
    background one.
    """
    key = _key(path)
    with _lock:
        found = _engines.get(key)
        if found is None:
            found = _engines[key] = Docroot(key, busy_timeout=busy_timeout,
                                            log_load_errors=log_load_errors)
        return found


def hold(path: str | os.PathLike[str], *, busy_timeout: float = REQUEST_BUSY_TIMEOUT,
         log_load_errors: bool = True) -> Docroot:
    """``engine(path)``, kept open until as many ``let_go`` calls as holds."""
    found = engine(path, busy_timeout=busy_timeout, log_load_errors=log_load_errors)
    key = _key(found.path)
    with _lock:
        _holds[key] = _holds.get(key, 0) + 1
    return found


def let_go(doc: Docroot) -> None:
    """Give back a hold; the last one closes the engine."""
    key = _key(doc.path)
    with _lock:
        left = _holds.get(key, 0) - 1
        if left > 0:
            _holds[key] = left
            return
        _holds.pop(key, None)
        if _engines.get(key) is doc:
            del _engines[key]
    doc.close()


def close_all() -> None:
    """Close every engine of this process (a command's end; the interpreter's exit)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _holds.clear()
    for doc in engines:
        doc.close()


def _after_fork_in_child() -> None:
    # A fork taken while another thread held the lock must not deadlock the
    # child.  The engines stay: their stores re-open their connections in
    # the child and never close the parent's.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_all)
