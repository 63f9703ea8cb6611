"""``@delay``, ``Task.delay`` and ``Result``: hand work to a task process, see how it went.

A deferred call is stored in the state of a DOCROOT, found in this order:
``@delay(docroot=…)``; the middleware serving the request this call is made
in; the one middleware of this process; ``REQCRON_DOCROOT``.  With none,
the call runs inline and returns a ready Result (said once in the log).

A call made during a request is held until that request's response has
been sent (the middleware releases it then, and starts a task process at
once), so the work never races the response, nor a transaction the view
commits after deferring.  Finding the request costs a walk up the stack at
the call, not a thing per request: the hot path stays as it was.  That walk
finds a WSGI request, and an ASGI one whose view runs on the request's own
coroutine stack; an ASGI view run in a threadpool (sync views of Starlette,
FastAPI, Django) or in a task of its own is found through a ContextVar that
ReqCronASGI sets per request once this process has deferred functions (see
asgi.py for why only then).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ..engine.stored_calls import HOLD, TASKS_MODULE, Call, new_run
from ..errors import StateError
from ..logonce import LogOnce
from ..records import now
from . import budget, serving
from .result import Result, engine_of

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from ..engine.docroot import Docroot

log = logging.getLogger("reqcron")

P = ParamSpec("P")
R = TypeVar("R")

_log_once = LogOnce()
_eager = os.environ.get("REQCRON_EAGER", "") not in ("", "0")


def set_eager(enabled: bool = True) -> bool:
    """Run every deferred call inline from now on (tests of an app); return the old value."""
    global _eager
    previous, _eager = _eager, enabled
    return previous


class Deferred(Generic[P, R]):
    """A function marked with ``@delay``: calling it queues the call and returns a Result."""

    def __init__(self, function: Callable[P, R], *, delay: float = 0.0,
                 at: datetime | None = None, retries: int = 0, timeout: float | None = None,
                 docroot: str | os.PathLike[str] | None = None):
        self.function = function
        self.target = import_name(function)
        self.delay, self.at, self.retries, self.timeout = delay, at, retries, timeout
        self.docroot = os.fspath(docroot) if docroot is not None else None
        self.__name__ = getattr(function, "__name__", "call")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = function.__doc__
        self.__wrapped__ = function
        serving.note_use()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Result[R]:
        call = Call(self.target, list(args), kwargs, retries=self.retries,
                    timeout=self.timeout, path=_import_path())
        return defer(call, lambda: self.function(*args, **kwargs), _when(self.delay, self.at),
                     self.docroot)

    def map(self, arguments: Iterable[Sequence[Any]], /) -> list[Result[R]]:
        """Queue one call per item of ``arguments`` (each a tuple of positional arguments),
        all stored in one write: thousands cost about what one call does, not one each."""
        path = _import_path()
        calls: list[Call] = []
        inlines: list[Callable[[], R]] = []
        function: Callable[..., R] = self.function
        for args in arguments:
            listed = list(args)
            calls.append(Call(self.target, listed, {}, retries=self.retries,
                              timeout=self.timeout, path=path))
            inlines.append(functools.partial(function, *listed))
        return defer_all(calls, inlines, _when(self.delay, self.at), self.docroot)

    def __repr__(self) -> str:
        return f"<deferred function {self.target}>"


@overload
def delay(function: Callable[P, R], /) -> Deferred[P, R]: ...


@overload
def delay(function: None = None, /, *, seconds: float = 0, minutes: float = 0,
          hours: float = 0, days: float = 0, weeks: float = 0, at: datetime | None = None,
          retries: int = 0,
          timeout: float | timedelta | None = None,
          docroot: str | os.PathLike[str] | None = None,
          ) -> Callable[[Callable[P, R]], Deferred[P, R]]: ...


def delay(function: Callable[P, R] | None = None, /, *, seconds: float = 0, minutes: float = 0,
          hours: float = 0, days: float = 0, weeks: float = 0, at: datetime | None = None,
          retries: int = 0,
          timeout: float | timedelta | None = None,
          docroot: str | os.PathLike[str] | None = None,
          ) -> Deferred[P, R] | Callable[[Callable[P, R]], Deferred[P, R]]:
    """Mark a module-level function so that calling it runs it later, in a task process.

    ``@delay`` or ``@delay(minutes=5, retries=3, timeout=60)`` (``seconds=`` to
    ``weeks=``, as ``@every`` takes them); the call returns a Result at once.
    Arguments must be JSON.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number of 0 or more, not {retries!r}")
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        raise ValueError("at must be an aware datetime (with a tzinfo)")
    wait = timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days,
                     weeks=weeks).total_seconds()
    if wait < 0:
        raise ValueError("a delay cannot be negative")
    limit = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if limit is not None and limit <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")

    def mark(fn: Callable[P, R]) -> Deferred[P, R]:
        return Deferred(fn, delay=wait, at=at, retries=retries, timeout=limit, docroot=docroot)

    return mark(function) if function is not None else mark


def import_name(function: Callable[..., Any]) -> str:
    """``module:qualname`` by which a task process finds ``function``; TypeError if none."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not callable(function) or not module or not qualname:
        raise TypeError(f"@delay needs a function, not {function!r}")
    if qualname.endswith("<lambda>"):
        raise TypeError(f"@delay cannot defer a lambda (in {module}): a task process finds "
                        "the function by its name, which a lambda has not; define it with "
                        "def, at module level")
    if "<locals>" in qualname:
        raise TypeError(f"@delay needs a module-level function: {qualname} is defined inside "
                        "another function, where a task process cannot find it")
    if module == "__main__":
        raise TypeError(f"@delay cannot mark {qualname} in __main__ (a script run directly): "
                        "a task process cannot import it; move it into a module")
    from ..loading.loader import TASKS_MODULE_PREFIX

    if module.startswith(TASKS_MODULE_PREFIX):
        module = TASKS_MODULE  # the DOCROOT's own file, under one name on every host
    return f"{module}:{qualname}"


def defer_task(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Result[Any]:
    """``SomeTask.delay(...)``: queue a run of the task with these arguments."""
    name = str(getattr(cls, "name", cls.__name__))
    call = Call(name, list(args), kwargs, task=True)
    return defer(call, lambda: cls().run(*args, **kwargs), None, None)


def defer(call: Call, inline: Callable[[], R], at: float | None,
          docroot: str | None) -> Result[R]:
    """Queue ``call`` in its DOCROOT's state, or run it inline where there is none."""
    return defer_all([call], [inline], at, docroot)[0]


def defer_all(calls: list[Call], inlines: list[Callable[[], R]], at: float | None,
              docroot: str | None) -> list[Result[R]]:
    """Queue ``calls`` together, in one write, or run them inline where there is no state."""
    serving.note_use()
    middleware, key, root = serving.where(docroot)
    if root is None or _eager:
        for call in calls:
            call.encode()  # the same TypeError as a queued call would give
        if not _eager:
            _log_once(logging.WARNING, "reqcron: no DOCROOT in this process (no ReqCron "
                      "middleware, no REQCRON_DOCROOT): deferred calls run inline")
        return [Result.inline(inline) for inline in inlines]
    if not calls:
        return []
    engine = engine_of(root)
    created = now()
    due = created if at is None else max(at, created)
    held = middleware is not None and due < created + HOLD
    # A request waits for a networked state a budget at most (budget.py).
    budgeted = middleware is not None and engine.store.networked
    if budgeted:
        for call in calls:  # stored once, by the late write or an enqueuer
            call.token = os.urandom(16).hex()
    runs = [new_run(call, created, due + HOLD if held else due)  # the caller's TypeError
            for call in calls]
    try:
        if budgeted:
            ids = budget.store(engine, runs, [new_run(c, created, due) for c in calls],
                               [c.token or "" for c in calls])
        else:
            ids = engine.store.add_runs(runs)
    except budget.InFlight as late:
        if held:
            assert middleware is not None
            middleware.hold(late.write, engine, key)
        _log_spooled(root, "the state did not answer in time")
        return [Result(root, None, token=call.token) for call in calls]
    except StateError as exc:  # a request is never failed by the state
        return [_keep(engine, root, call, created, due, exc) for call in calls]
    if held:
        assert middleware is not None
        for run_id in ids:
            middleware.hold(run_id, engine, key)
    return [Result(root, run_id) for run_id in ids]


def release(engine: Docroot, held: list[int | budget.Write]) -> None:
    """Let the calls held during a request run (its response has been sent)."""
    ids = [h for h in held if isinstance(h, int)]
    if ids:
        engine.store.release_calls(ids, HOLD)
    for late in held:
        if not isinstance(late, int):
            late.release()


def _keep(engine: Docroot, root: str, call: Call, created: float, due: float,
          error: StateError) -> Result[R]:
    """Keep a call the state would not take in this host's spool (engine/call_spool.py)."""
    from ..engine import call_spool

    call.token = call.token or os.urandom(16).hex()
    call_spool.keep(engine.settings.state_dir, call.token, new_run(call, created, due))
    _log_spooled(root, error)
    return Result(root, None, token=call.token)


def _log_spooled(root: str, why: object) -> None:
    _log_once(logging.WARNING, "reqcron: %s: deferred calls wait in this host's spool until "
              "the state can be reached again: %s", root, why, key=f"spool:{root}")


def _when(delay: float, at: datetime | None) -> float | None:
    if at is not None:
        return at.timestamp()
    return now() + delay if delay else None


_path_seen: tuple[tuple[str, ...], str, list[str]] = ((), "", [])


def _import_path() -> list[str]:
    # Absolute: the task process starts in the DOCROOT, not in the server's
    # working directory (uvicorn puts "." on sys.path).  Made again only when sys.path
    # or the working directory changed: a burst of calls pays it once.
    global _path_seen
    seen, cwd, made = _path_seen
    here = os.getcwd()
    if tuple(sys.path) != seen or here != cwd:
        made = [os.path.abspath(p) for p in sys.path if p]
        _path_seen = (tuple(sys.path), here, made)
    return list(made)
