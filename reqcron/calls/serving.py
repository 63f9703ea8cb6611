"""Which request (and so which middleware and DOCROOT) a deferred call is made in.

The web layer registers itself here, never the other way round: each
middleware class names its request entry point (``entry_point``), each
middleware instance registers itself (``register``), and an ASGI request
whose view may run off the request's own stack is put in ``current``.  A
call then walks its own stack to the innermost entry point: about 2 µs per
call, nothing per request.
"""

from __future__ import annotations

import contextvars
import os
import sys
import weakref

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from types import CodeType
    from typing import Any, Protocol

    from ..engine.docroot import Docroot
    from .budget import Write

    class Holder(Protocol):
        """A middleware: it holds a request's calls until its response has been sent."""

        @property
        def fixed_docroot(self) -> str | None: ...

        def hold(self, run_id: int | Write, engine: Docroot, key: Hashable) -> None: ...

        def track_calls(self) -> None: ...

    class Request(Protocol):
        """An ASGI request in ``current``: where it is served, while it is."""

        def serving(self) -> Serving | None: ...

    #: (middleware to hold the call, or None; the request's key; its DOCROOT)
    Serving = tuple[Holder | None, Hashable, str | None]

_entries: dict[CodeType, Callable[[dict[str, Any]], Serving]] = {}
_middlewares: weakref.WeakSet[Holder] = weakref.WeakSet()
_used = False  # a deferred function exists in this process: ASGI requests are followed

#: The ASGI request of this context, set by ReqCronASGI once calls are followed
#: (a view in a threadpool or a task of its own is not on the request's stack).
current: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "reqcron_request", default=None)


def entry_point(function: Callable[..., Any],
                resolve: Callable[[dict[str, Any]], Serving]) -> None:
    """Make ``function``'s frames mark a request; ``resolve`` reads it off their locals."""
    _entries[function.__code__] = resolve


def register(middleware: Holder) -> None:
    _middlewares.add(middleware)
    if _used:
        middleware.track_calls()


def unregister(middleware: Holder) -> None:
    _middlewares.discard(middleware)


def used() -> bool:
    """Whether this process has deferred functions (or has deferred a call)."""
    return _used


def note_use() -> None:
    global _used
    if not _used:
        _used = True
        for middleware in list(_middlewares):
            middleware.track_calls()


def where(docroot: str | None) -> Serving:
    """The middleware serving this call's request (if any), its request key, the DOCROOT.

    The DOCROOT is ``docroot`` if given; else the request's; else the one
    middleware of this process's; else ``REQCRON_DOCROOT``.
    """
    serving = _serving()
    if docroot is not None:
        return (serving[0], serving[1], docroot) if serving else (None, None, docroot)
    if serving is not None and serving[2]:
        return serving
    fixed = {m.fixed_docroot for m in list(_middlewares) if m.fixed_docroot}
    if len(fixed) == 1:
        return None, None, fixed.pop()
    return None, None, os.environ.get("REQCRON_DOCROOT") or None


def _serving() -> Serving | None:
    """(middleware, request key, DOCROOT) of the request this call is made in, or None.

    The innermost entry point on this thread's stack; else the ASGI request
    of this context.  The middleware is None where the call is not to be
    held (a websocket).
    """
    if not _middlewares:
        return None
    frame = sys._getframe(2)
    while frame is not None:
        resolve = _entries.get(frame.f_code)
        if resolve is not None:
            return resolve(frame.f_locals)
        frame = frame.f_back  # type: ignore[assignment]
    request = current.get()
    return request.serving() if request is not None else None
