"""What runs in the forked task child: set up, run(), report; never returns.

The child leads its own process group, closes the caller's lock fds, dies
with its supervisor (a lifeline pipe), writes its stack to a pipe when
asked to stop, and caps what it reports (limits.py) before serialising it.
"""

from __future__ import annotations

import faulthandler  # here, not per run: a process running many calls forks many children
import logging
import os
import signal
import sqlite3
import sys
import time
import traceback

from ..errors import ReqCronError
from ..limits import ERROR_LIMIT, RETURN_VALUE_LIMIT, TRACEBACK_LIMIT, cap

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from ..task_base import TaskBase as Task

DISABLED_CHECK_EVERY = 1.0  # seconds between proceed()'s looks at the enabled flag
#: Why a run whose task's when() returned False was skipped.
WHEN_SAID_NO = "when() said no"


def run_child(
    task: Task,
    out_w: int,
    res_w: int,
    stack_w: int,
    lifeline: int,
    bind: Callable[[list[bool]], None],
) -> None:
    """Run the task in the forked child and report; never returns."""
    report: dict[str, Any] = {"ok": False}
    try:
        stopping = set_up(out_w, stack_w, lifeline)
        report = run_one(task, lambda: bind(stopping))
    finally:
        try:
            send(res_w, report)
        finally:
            os._exit(0 if report.get("ok") else 1)


def set_up(out_w: int, stack_w: int, lifeline: int) -> list[bool]:
    """Make this forked child a task's process: output, signals, stack dump, logging.

    Returns the list a SIGTERM appends to (what proceed() looks at).
    """
    watcher = _die_with_supervisor(lifeline)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.close(out_w)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda _s, _f: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns ^C into SIGTERM
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _dump_stack_on_stop(stack_w, watcher)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return stopping


def run_one(task: Task, bind: Callable[[], None]) -> dict[str, Any]:
    """Run ``task`` here and return its report (what became of it, capped)."""
    try:
        bind()
        when = getattr(task, "when", None)
        if callable(when) and not when():  # Laravel's when/skip: not run, and why
            return {"ok": True, "skipped": WHEN_SAID_NO}
        value = task.run()
        return {"ok": True, "return_value": _describe(value)}
    except BaseException as exc:  # the task's failure is data, reported below
        trace = _trace(exc)
        try:
            sys.stderr.write(trace)
        except Exception:
            pass
        return {"ok": False, "error": _error(exc), "traceback": trace}
    finally:
        try:
            if task._database is not None:
                task._database.close()
        except Exception:
            pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass


def send(res_w: int, report: dict[str, Any]) -> None:
    """Write one report (a line of JSON) to the supervisor."""
    import json

    data = json.dumps(report).encode() + b"\n"
    while data:
        data = data[os.write(res_w, data):]


def bind_context(
    task: Task,
    stopping: list[bool],
    *,
    docroot: Path,
    config: Mapping[str, Any],
    database: str | None,
    is_disabled: Callable[[], bool],
) -> None:
    task.config = config
    task.docroot = docroot
    checked = [0.0, False]

    def stop_requested() -> bool:
        if stopping:
            return True
        clock = time.monotonic()
        if clock - checked[0] >= DISABLED_CHECK_EVERY:
            checked[0] = clock
            try:
                checked[1] = is_disabled()
            except ReqCronError:
                pass
        return bool(checked[1])

    task._stop_requested = stop_requested
    if database:
        spec = database
        task._open_database = lambda: open_database(spec, docroot)


def open_database(spec: str, docroot: os.PathLike[str]) -> Any:
    """Open the DB-API connection that reqcron.toml's ``database`` names."""
    if ":" in spec and not spec.endswith((".db", ".sqlite", ".sqlite3")):
        import importlib

        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory()
    path = os.path.join(docroot, os.path.expanduser(spec))
    return sqlite3.connect(path)


def _describe(value: Any) -> str | None:
    """Return the run's return value as JSON (or its repr), capped."""
    import json

    if value is None:
        return None
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return cap(text, RETURN_VALUE_LIMIT)


def _error(exc: BaseException) -> str:
    """Return ``Type: message``, the message cut before anything copies it whole."""
    name = type(exc).__name__
    return f"{name}: {cap(_message(exc), max(ERROR_LIMIT - len(name) - 2, 0))}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<its str() failed>"


def _trace(exc: BaseException) -> str:
    """Format the traceback from the task's frame on, each message in it capped."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # not _child's frame
    top = traceback.TracebackException(type(exc), exc, tb, compact=True)
    # format() would copy each exception's text whole: cut it first.  ``_str``
    # is where TracebackException keeps it (3.11 to 3.13); without it, no harm.
    pending, seen = [top], set()
    while pending:
        te = pending.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        text = getattr(te, "_str", None)
        if isinstance(text, str) and len(text) > ERROR_LIMIT:
            setattr(te, "_str", cap(text, ERROR_LIMIT))  # noqa: B010 - not in the stubs
        notes = getattr(te, "__notes__", None)
        if isinstance(notes, list):
            te.__notes__ = [cap(str(n), ERROR_LIMIT) for n in notes[:20]]
        pending += [t for t in (te.__cause__, te.__context__) if t is not None]
        pending += getattr(te, "exceptions", None) or []
    return cap("".join(top.format()), TRACEBACK_LIMIT, keep_end=True)


def _dump_stack_on_stop(stack_w: int, lifeline: int | None) -> None:
    """On SIGTERM, write every thread's stack to ``stack_w``, then stop as asked.

    faulthandler writes from its C signal handler, so the stack shows even
    while the task is stuck in C code; ``chain`` then runs the Python
    handler that turns proceed() False.  A task that sets its own SIGTERM
    handler replaces this one.
    """
    import threading

    os.write(stack_w, f"reqcron-threads {threading.get_ident():x} {lifeline or 0:x}\n".encode())
    faulthandler.register(signal.SIGTERM, file=stack_w, all_threads=True, chain=True)
    # A process the task forks is not the task: its stack would only mix in.
    os.register_at_fork(after_in_child=lambda: faulthandler.unregister(signal.SIGTERM))


#: prctl(2), set by prepare_for_many_runs() in a process that forks a child per call.
_prctl: Callable[..., int] | None = None
_PR_SET_PDEATHSIG = 1


def prepare_for_many_runs() -> None:
    """Let children die with their supervisor through the kernel, not a thread each.

    Loading libc through ctypes costs a few milliseconds once: worth it in a
    process that forks a child per deferred call, not in one that runs one task.
    """
    global _prctl
    try:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the lifeline thread does it
        _prctl = None


def _die_with_supervisor(lifeline: int) -> int | None:
    """Kill this process as soon as its supervisor dies, so its locks die with it.

    The supervisor holds the only write end of ``lifeline``; the read sees
    EOF when it exits or is killed.  A pipe and a thread, or PR_SET_PDEATHSIG
    where prepare_for_many_runs() loaded prctl: no ctypes to import for one
    run, and it works beyond Linux.
    """
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        # The supervisor may have died before the call: the lifeline says so.
        import select

        if select.select([lifeline], [], [], 0)[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return None
    import threading

    def watch() -> None:
        try:
            while os.read(lifeline, 1):
                pass
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="reqcron-lifeline", daemon=True)
    thread.start()
    return thread.ident
