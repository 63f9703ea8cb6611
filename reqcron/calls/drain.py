"""A task process that runs queued deferred calls, one after another, until none is left.

``python -m reqcron.runtask --calls DOCROOT`` (started by the middleware and
``reqcron due``).  It first takes one of the DOCROOT's ``max_processes``
drain slots (a task lock, so it dies with the process and counts across
hosts on a shared state) or exits at once: however many calls come, no
more task processes than that run them.  The calls run in a forked child
kept from one call to the next (callworker.py), each with a run's own
timeout, output capture and record.  After its last call the process stays
a moment, so a burst spread over several requests is served by the
processes already started.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from ..engine.stored_calls import SLOT_LOCK, TASKS_MODULE, Call, Refused, check_json, end_values
from ..errors import ExitCode
from ..records import Status, now
from ..store.rows import Attempt
from ..task_base import TaskBase

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from ..config import Settings
    from ..records import Run
    from ..store import Lock, Store
    from .worker import CallWorker

log = logging.getLogger("reqcron")

LINGER = 1.0  # seconds a process waits for more calls after its last one
#: Seconds between looks at the queue while it lingers: soon after a call, then less
#: often (each look is a write: ~450 a second at the first pace, ~25 this way).
_POLL = (0.002, 0.05)


def drain_command(docroot: str) -> int:
    """``runtask --calls DOCROOT``: open the DOCROOT's state (not the whole engine), drain."""
    from ..config import load_settings
    from ..paths import docroot_path
    from ..store import open_store

    logging.basicConfig(level=logging.WARNING, format="runtask: %(message)s")
    settings = load_settings(docroot_path(docroot))
    store = open_store(settings)
    try:
        return drain(settings, store)
    finally:
        store.close()


def drain(settings: Settings, store: Store) -> int:
    """Run the DOCROOT's queued calls while there are some; return the exit code."""
    from ..engine.reaping import reap
    from ..engine.spool import spool_dir
    from ..run.child import prepare_for_many_runs

    prepare_for_many_runs()
    names = [SLOT_LOCK.format(i) for i in range(settings.max_processes)]
    # Calls deferred inside a call go to the same DOCROOT.
    os.environ["REQCRON_DOCROOT"] = str(settings.docroot)
    while True:
        slot = next((lock for name in names if (lock := store.take_task_lock(name))), None)
        if slot is None:
            return ExitCode.OK  # enough processes drain already; they take these calls too
        run_lock = store.take_run_lock()
        try:
            reap(store, folder=spool_dir(settings.state_dir), calls_only=True)
            stopped = _drain_while_queued(settings, store, slot, run_lock)
        finally:
            run_lock.release()
            slot.release()
        if stopped:  # asked to stop (SIGTERM): the calls not started stay queued
            return ExitCode.OK
        # A call queued between the last look and the release found every slot
        # taken and started no process: look once more now that one is free.
        if not store.due_calls(now(), 1):
            break
    store.prune_calls(now() - settings.result_days * 86400)
    return ExitCode.OK


def _drain_while_queued(settings: Settings, store: Store, slot: Lock, run_lock: Lock) -> bool:
    """Run calls while some are queued (and a while after); True if asked to stop."""
    from ..engine.spool import spool_dir
    from ..run.stopping import catch_stop_signals, restore_signals
    from .worker import CallWorker

    worker = CallWorker(
        docroot=settings.docroot, config=settings.config, database=settings.database,
        build=lambda text: _task_for(settings, Call.decode(text)),
        close_in_child=(*slot.fds, *run_lock.fds, *store.connection_fds()),
    )
    previous = catch_stop_signals(worker.stop_signal)
    idle_until = time.monotonic() + LINGER
    pause = _POLL[0]
    try:
        while not worker.stop_signal:
            run = store.take_call(now(), os.getpid(), run_lock.token)
            if run is None:
                if time.monotonic() >= idle_until:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _POLL[1])
                continue
            run_call(store, run, worker, spool_dir(settings.state_dir))
            idle_until = time.monotonic() + LINGER
            pause = _POLL[0]
        return True
    finally:
        worker.close()
        restore_signals(previous)


def run_call(store: Store, run: Run, worker: CallWorker, folder: Path | None = None) -> str:
    """Run one taken call in the worker's child and record it; return its status.

    The end is conditional on the attempt taken; while the state cannot
    take it, it waits in ``folder`` (the host's spool).
    """
    from ..engine.outcomes import record_end

    assert run.id is not None and run.call is not None
    outcome, refused = worker.run(run.call)
    fields = {"output": outcome.output, "return_value": outcome.return_value,
              "error": outcome.error, "traceback": outcome.traceback}
    if refused:
        values = {"status": Status.FAILED, "end": now(), "exit_code": ExitCode.USAGE, **fields}
        log.error("deferred call %s %s", run.id, outcome.error)
    else:
        values = end_values(run, now(), outcome.status, exit_code=ExitCode.OK
                            if outcome.status == Status.OK else ExitCode.FAILED, **fields)
    record_end(store, Attempt.of(run), values, folder)
    return Status.FAILED if refused else outcome.status


def _task_for(site: Settings, call: Call) -> TaskBase:
    """The task whose run() makes ``call``; Refused for anything not marked deferrable."""
    from .delay import Deferred

    attributes: dict[str, Any] = {}
    if call.task:
        base = type(_load_task(site, call.target))
        method = base.run
    else:
        target = _resolve(site, call)
        if not isinstance(target, Deferred):
            raise Refused(f"{call.target} is not a function marked with @delay")
        base, method = _CallTask, target.function
        attributes = {"name": call.target, "timeout": target.timeout}
    if call.timeout is not None:
        attributes["timeout"] = call.timeout
    # This call's timeout, not the class's.
    task: TaskBase = type(base.__name__, (base,), attributes)()
    args, kwargs = call.args, call.kwargs
    bound: Callable[[], Any] = (lambda: method(task, *args, **kwargs)) if call.task else (
        lambda: method(*args, **kwargs))
    task.run = lambda: _as_json(bound())  # type: ignore[method-assign]
    return task


class _CallTask(TaskBase):
    """What runs a deferred function: a task with no schedule, created per call."""

    abstract = True


def _as_json(value: Any) -> Any:
    """Let only JSON out of a call: its caller reads ``Result.result`` back."""
    check_json(value, "the return value")
    return value


def _load_task(site: Settings, name: str) -> TaskBase:
    from ..loading.loader import load_tasks

    loaded = load_tasks(site.docroot, None, only=name, compile_schedules=False,
                        modules=site.modules,
                        django_settings=site.django_settings)
    if name not in loaded.tasks:
        problems = [str(e) for e in loaded.errors if e.task in (None, name)]  # modules' too
        if problems:
            raise RuntimeError("; ".join(problems))
        raise Refused(f"{name} is not a task of {site.docroot}")
    return loaded.tasks[name]


def _resolve(site: Settings, call: Call) -> object:
    module_name, _, qualname = call.target.partition(":")
    if not qualname:
        raise Refused(f"{call.target!r} is not a function's import name")
    if module_name == TASKS_MODULE:
        from ..loading.loader import load_tasks
        from ..loading.loader import module_name as tasks_module

        loaded = load_tasks(site.docroot, None, only="", compile_schedules=False,
                            django_settings=site.django_settings)
        if not loaded.file_ok:
            raise RuntimeError("; ".join(str(e) for e in loaded.errors))
        module = sys.modules[tasks_module(site.docroot)]
    else:
        import importlib

        from ..loading.callees import vet
        from ..loading.import_path import setup_django

        refusal = vet(site.docroot, call.target, call.path)  # before anything is imported
        if refusal is not None:
            raise Refused(refusal)
        if site.django_settings:  # before the module, which may use models
            setup_django(site.django_settings)
        module = importlib.import_module(module_name)
    target: object = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise Refused(f"{call.target} does not exist")
    return target
