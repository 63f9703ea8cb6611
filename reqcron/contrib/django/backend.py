"""``ReqCronBackend``: Django's Tasks framework on reqcron's deferred calls, no worker needed.

``task.enqueue()`` stores a deferred call (calls/parked.py) that runs
``run_task`` in a task process, after the response and once the
transaction around the enqueue commits; a rollback drops it.  The result's
id is the call's id: ``get_result()`` reads its row back from the state.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.signals import request_finished
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from ...calls import parked
from ...calls.delay import _import_path, delay
from ...calls.result import engine_of
from ...engine.stored_calls import Call
from ...records import Run, Status
from . import tasks_api as api
from .conf import docroot

#: reqcron's statuses as Django's: a call queued again for a retry is ready again.
STATUSES = {
    Status.QUEUED: "READY", Status.PENDING: "READY", Status.RUNNING: "RUNNING",
    Status.OK: "SUCCESSFUL", Status.FAILED: "FAILED", Status.TIMEOUT: "FAILED",
    Status.LOST: "FAILED", Status.SKIPPED: "FAILED", Status.MISSED: "FAILED",
    Status.CANCELLED: "FAILED",
}
log = logging.getLogger("reqcron")
ROLLED_BACK = "its transaction was rolled back: not run"


class ReqCronBackend(api.BaseTaskBackend):  # type: ignore[misc]
    """``TASKS = {"default": {"BACKEND": "reqcron.contrib.django.ReqCronBackend"}}``.

    ``OPTIONS``: ``DOCROOT`` (default: REQCRON_DOCROOT, else BASE_DIR) and
    ``DATABASE``, whose transactions an enqueue waits for (default "default").
    """

    supports_defer = True  # run_after: the call is due then
    supports_async_task = True  # a coroutine function runs to its end in the task process
    supports_get_result = True  # from any process, from the state
    supports_priority = False  # calls run in the order they come due, whatever their priority

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.docroot = str(self.options.get("DOCROOT") or docroot())
        self.database = str(self.options.get("DATABASE") or DEFAULT_DB_ALIAS)
        self._pending = threading.local()  # calls parked until a commit, per thread
        request_finished.connect(self._drop_rolled_back, weak=False,
                                 dispatch_uid=f"reqcron-tasks-{alias}")

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Park a call to ``task``; let it go when the transaction commits."""
        self.validate_task(task)
        created = timezone.now()
        result = api.TaskResult(
            task=task, id="", status=api.TaskResultStatus.READY, enqueued_at=created,
            started_at=None, finished_at=None, last_attempted_at=None, args=args,
            kwargs=kwargs, backend=self.alias, errors=[], worker_ids=[])
        call = Call(run_task.target, [task.module_path, result.args, result.kwargs], {},
                    path=_import_path())
        run_id = parked.park(call, self.docroot)
        object.__setattr__(result, "id", str(run_id))
        call.args.append(result.id)  # so a task that takes its context can read its result
        at = task.run_after.timestamp() if task.run_after is not None else None
        entry: list[Any] = [run_id]

        def committed() -> None:
            self._forget(entry)
            try:
                if parked.let_go(run_id, self.docroot, at, call):
                    api.signals.task_enqueued.send(type(self), task_result=result)
            except Exception:  # never the commit's problem; the call stays parked
                log.exception("reqcron: cannot let task call %s go", run_id)

        self._pending_list().append(entry)
        entry.append(committed)
        transaction.on_commit(committed, using=self.database)
        return result

    def get_result(self, result_id: str) -> Any:
        """The TaskResult of call ``result_id``, as the state has it now."""
        run = self._run(result_id)
        call = Call.decode(run.call or "")
        task = import_string(call.args[0])
        result = api.TaskResult(
            task=task, id=str(run.id), status=api.TaskResultStatus[STATUSES[Status(run.status)]],
            enqueued_at=_moment(run.created), started_at=_moment(run.start),
            finished_at=_moment(run.end) if Status(run.status).is_final else None,
            last_attempted_at=_moment(run.start), args=call.args[1], kwargs=call.args[2],
            backend=self.alias, errors=_errors(run), worker_ids=_workers(run))
        if run.status == Status.OK and run.return_value is not None:
            object.__setattr__(result, "_return_value", json.loads(run.return_value))
        return result

    def _run(self, result_id: str) -> Run:
        engine = engine_of(self.docroot)
        run = engine.get_run(int(result_id)) if str(result_id).isdigit() else None
        if run is None or run.call is None or not _is_ours(run.call):
            raise api.TaskResultDoesNotExist(result_id)
        return run

    # -- rollbacks -------------------------------------------------------------------

    def _pending_list(self) -> list[list[Any]]:
        if not hasattr(self._pending, "calls"):
            self._pending.calls = []
        calls: list[list[Any]] = self._pending.calls
        return calls

    def _forget(self, entry: list[Any]) -> None:
        calls = self._pending_list()
        if entry in calls:
            calls.remove(entry)

    def _drop_rolled_back(self, **kwargs: Any) -> None:
        """At the end of a request: a call whose commit never came was rolled back."""
        calls = self._pending_list()
        if not calls:
            return
        waiting = connections[self.database].run_on_commit
        hooks = {id(hook[1]) for hook in waiting}
        for entry in list(calls):
            if id(entry[1]) not in hooks:  # its transaction is over without a commit
                calls.remove(entry)
                parked.drop(entry[0], self.docroot, ROLLED_BACK)


@delay
def run_task(path: str, args: list[Any], kwargs: dict[str, Any],
             result_id: str | None = None) -> Any:
    """Run the django.tasks Task at ``path`` (in a task process); return its return value."""
    task = import_string(path)
    backend = task.get_backend()
    result = backend.get_result(result_id) if result_id is not None else None
    if result is not None:
        api.signals.task_started.send(type(backend), task_result=result)
    try:
        if task.takes_context:
            value = task.call(api.TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        return api.normalize_json(value)
    finally:
        if result is not None:
            api.signals.task_finished.send(type(backend), task_result=result)


def _is_ours(text: str) -> bool:
    try:
        return Call.decode(text).target == run_task.target
    except (ValueError, KeyError, TypeError):
        return False


def _moment(timestamp: float | None) -> datetime | None:
    """A time of the state as Django shows times: aware in UTC, or naive local time."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment if settings.USE_TZ else timezone.make_naive(moment)


def _errors(run: Run) -> list[Any]:
    """The error of a call that did not succeed, as Django's TaskError."""
    if not Status(run.status).is_final or run.status == Status.OK:
        return []
    trace = run.traceback or run.error or run.status
    last = trace.strip().splitlines()[-1] if trace.strip() else ""
    name = last.partition(":")[0].strip()
    if run.status == Status.TIMEOUT:
        path = "builtins.TimeoutError"
    elif name.isidentifier():
        path = f"builtins.{name}"
    elif name and all(part.isidentifier() for part in name.split(".")):
        path = name
    else:
        path = "builtins.RuntimeError"
    return [api.TaskError(exception_class_path=path, traceback=trace)]


def _workers(run: Run) -> list[str]:
    """One id per attempt (Django counts attempts so): the process of the last."""
    return [f"pid {run.pid}" if run.pid else "reqcron"] * run.attempts
