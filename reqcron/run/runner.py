"""What ``runtask`` does: check, lock, run the task (``supervise``), record, exit.

The task runs in a forked child that ``supervise`` watches over; this module
keeps the bookkeeping around it: claims, locks, the run's row, exit codes.
Never imports webob or watchdog; croniter only when the task's own cron
schedule must be read.
"""

from __future__ import annotations

import logging
import os
import time

from ..errors import ExitCode, NotRun, StateError, TaskLookupError
from ..loading.loader import load_tasks
from ..records import Run, Status, Trigger, now
from ..schedule.zones import zone_named
from ..store.rows import LEASE, Attempt
from .supervise import supervise

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any

    from ..engine.docroot import Docroot
    from ..store import Store
    from ..task_base import TaskBase as Task

log = logging.getLogger("reqcron")

_EXIT_CODES = {Status.OK: ExitCode.OK, Status.TIMEOUT: ExitCode.TIMEOUT,
               Status.SKIPPED: ExitCode.NOT_RUN}  # else ExitCode.FAILED


def run_command(docroot_path: str, name: str, *, run_id: int | None = None,
                if_due: bool = False) -> int:
    """What ``runtask`` and ``reqcron run`` do: open the DOCROOT, run the task, close."""
    from ..engine import registry

    logging.basicConfig(level=logging.WARNING, format="runtask: %(message)s")
    # A refusal names the load errors: no need to log them too.
    docroot = registry.engine(docroot_path, busy_timeout=registry.BACKGROUND_BUSY_TIMEOUT,
                              log_load_errors=False)
    os.environ["REQCRON_DOCROOT"] = str(docroot.path)  # where calls the task defers go
    try:
        if run_id is None:  # a person or a crontab, not the server
            from ..paths import owner_warning

            warning = owner_warning(docroot.path)
            if warning:  # the command's own prefix: runtask's, or reqcron's for `reqcron run`
                log.warning("warning: %s", warning)
        return run_task(docroot, name, run_id=run_id, if_due=if_due)
    finally:
        registry.close_all()


def run_task(docroot: Docroot, name: str, *, run_id: int | None = None, echo: bool = True,
             if_due: bool = False) -> int:
    """Run task ``name`` of ``docroot`` now, in the foreground; return the exit code.

    With ``if_due`` (a crontab line of ``reqcron crontab``) it runs only if it
    claims the task's due slot, and exits 0 quietly when another trigger
    already started that slot: each slot runs once, whoever comes first.
    ``run_id`` is a run that ``Docroot.due()`` claimed and left pending; without
    it the run claims the task's slot if one is due (a crontab line), or is a
    manual run.  Raises NotRun for exit codes 2 and 75, with the reason.
    Once the task's run() was entered, the task's own exit code is returned
    whatever the state does: an outcome it cannot take waits in the spool.
    """
    store = docroot.store
    # Taken first and named in the claimed row: from now on a reaper on any
    # host sees this process alive, however long the task takes to load.
    run_lock = store.take_run_lock()
    task_lock = None
    after: Callable[[], None] | None = None
    try:
        attempt = _take(store, run_id, name, run_lock.token) if run_id is not None else None
        task, trigger = _load(docroot, name, attempt)
        if attempt is None:
            claim = docroot.claim_due(name)
            if claim is not None:  # this process claimed it: no other can have taken it
                attempt, trigger = Attempt(claim.run_id, Status.PENDING), Trigger.CRON
                _stands_for(docroot, task, store.get_run(claim.run_id))
            elif if_due:
                return ExitCode.OK
        # The run starts once its code is loaded and the state is open (a first connection
        # to PostgreSQL is not the task's time).
        started = now()

        if not docroot.is_enabled(name):
            _record_not_run(docroot, name, attempt, trigger, started, "disabled")
            raise NotRun(ExitCode.NOT_RUN, f"task {name!r} is disabled")
        if not task.even_when_paused and docroot.paused() is not None:
            _record_not_run(docroot, name, attempt, trigger, started, "paused")
            raise NotRun(ExitCode.NOT_RUN, f"the site is paused (reqcron resume {docroot.path}); "
                                           f"task {name!r} not run")
        if not task.overlap:
            task_lock = store.take_task_lock(name)
            if task_lock is None or _leased_elsewhere(store, name, attempt):
                _record_not_run(
                    docroot, name, attempt, trigger, started, "the previous run is still going"
                )
                raise NotRun(ExitCode.NOT_RUN, f"task {name!r} is still running from before")
        docroot.reap(name)
        running: dict[str, Any] = {
            "status": Status.RUNNING,
            "start": started,
            "pid": os.getpid(),
            "lock": run_lock.token,
            "lease": now() + LEASE if store.leases else None,
        }
        if attempt is None:
            run_id = store.add_run(Run(task=name, trigger=trigger, created=started, **running))
            attempt = Attempt(run_id, Status.RUNNING, run_lock.token)
        elif store.update_run_if(attempt, **running):
            attempt = attempt.moved(**running)
        else:  # a reaper or a second process ended this attempt meanwhile: never run it twice
            raise NotRun(ExitCode.NOT_RUN, f"run {attempt.id} of {name!r} was ended by another "
                                           "process before it started; not run")
        code, after = _run(docroot, task, attempt, echo, (*run_lock.fds, *(
            task_lock.fds if task_lock else ())))
    finally:
        run_lock.release()
        if task_lock is not None:
            task_lock.release()
    if after is not None:
        after()  # once the locks are let go: a slow endpoint holds no later slot back
    return code


def _take(store: Store, run_id: int, name: str, token: str) -> Attempt:
    """Take the pending row ``run_id`` claimed for this process: name its lock in it."""
    claimed = store.get_run(run_id)
    if claimed is None or claimed.task != name:
        raise NotRun(ExitCode.USAGE, f"run {run_id} is not a claimed run of task {name!r}")
    if claimed.status != Status.PENDING or claimed.lock is not None:
        why = (f"recorded {claimed.status}" if claimed.status != Status.PENDING
               else "taken by another process")
        raise NotRun(ExitCode.NOT_RUN, f"run {run_id} of {name!r} was {why} already "
                                       f"({claimed.error or 'no reason given'}); not run")
    attempt = Attempt.of(claimed)
    if not store.update_run_if(attempt, lock=token, pid=os.getpid()):
        raise NotRun(ExitCode.NOT_RUN, f"run {run_id} of {name!r} was taken or ended by another "
                                       "process; not run")
    return attempt.moved(lock=token)


def _load(docroot: Docroot, name: str, attempt: Attempt | None) -> tuple[Task, Trigger]:
    """Load the task (recording why not, for a claimed run); return it and its trigger."""
    store = docroot.store
    started = now()

    def refuse(code: int, message: str) -> NotRun:
        if attempt is not None:
            store.update_run_if(attempt, status=Status.FAILED, start=started, end=now(),
                                error=message, exit_code=code, pid=os.getpid())
        return NotRun(code, message)

    # A claimed run starts fast: its schedule was read and validated already.
    zone = None if attempt is not None else zone_named(docroot.zone_name())
    settings = docroot.settings
    loaded = load_tasks(docroot.path, zone, only=name, compile_schedules=attempt is None,
                        modules=settings.modules, django_settings=settings.django_settings)
    file_errors = [e for e in loaded.errors if e.task is None and e.module is None]
    if file_errors:
        raise refuse(ExitCode.USAGE, "; ".join(str(e) for e in file_errors))
    task_errors = [e for e in loaded.errors if e.task == name]
    if task_errors:
        raise refuse(ExitCode.USAGE, str(task_errors[0]))
    if name not in loaded.tasks:
        # Not found: it may be in a task module that does not import now.
        module_errors = [str(e) for e in loaded.errors if e.module is not None]
        raise refuse(ExitCode.USAGE, "; ".join(module_errors)
                     or str(TaskLookupError(name, loaded.names)))
    trigger = Trigger.MANUAL
    task = loaded.tasks[name]
    if attempt is not None:
        claimed = store.get_run(attempt.id)
        trigger = Trigger(claimed.trigger) if claimed is not None else Trigger.REQUEST
        _stands_for(docroot, task, claimed)
    return task, trigger


def _stands_for(docroot: Docroot, task: Task, claimed: Run | None) -> None:
    """Give the task the slot its claimed run stands for (self.slot, self.slots)."""
    if claimed is None or claimed.slot is None:
        return
    from datetime import datetime

    task.slot = datetime.fromtimestamp(claimed.slot, zone_named(task.timezone
                                                                or docroot.zone_name()))
    task.slots = claimed.slots


def _run(docroot: Docroot, task: Task, attempt: Attempt, echo: bool,
         locks: tuple[int, ...]) -> tuple[int, Callable[[], None] | None]:
    """Run the task in a supervised child and record its end; return its exit code, and
    what is to follow once its locks are let go (pruning, pings, notifications).

    Nothing here fails on the state: the outcome is written (retried, or
    kept in the spool) and the task's own exit code returned.
    """
    from ..engine.outcomes import Written, record_end
    from ..engine.spool import spool_dir

    store, name = docroot.store, task.name
    pinged = None
    if task.ping:
        from ..alerts import ping_start

        pinged = ping_start(task.ping)
    outcome = supervise(
        task,
        docroot=docroot.path,
        config=docroot.settings.config,
        database=docroot.settings.database,
        is_disabled=lambda: not docroot.is_enabled(name),
        echo=echo,
        close_in_child=(*locks, *store.connection_fds()),
        tick=Keeper(docroot, task, attempt),
    )
    exit_code = _EXIT_CODES.get(outcome.status, ExitCode.FAILED)
    if outcome.status == Status.TIMEOUT:
        where = f"; it was at {outcome.stuck_at}" if outcome.stuck_at else ""
        log.warning("task %r timed out after %g s%s", name, task.seconds("timeout"), where)
    values = {"status": outcome.status, "end": now(), "exit_code": exit_code,
              "output": outcome.output, "return_value": outcome.return_value,
              "error": outcome.error, "traceback": outcome.traceback}
    written = record_end(store, attempt, values, spool_dir(docroot.settings.state_dir))
    if written == Written.REFUSED:
        log.warning("the outcome of run %s was not recorded: another process ended it",
                    attempt.id)
    if written not in (Written.RECORDED, Written.CORRECTED):
        return exit_code, None

    def after() -> None:
        try:
            store.prune(name, docroot.settings.history)
            if task.notify or docroot.settings.notify or task.ping:
                _tell(docroot, task, attempt.id, outcome.status in (Status.OK, Status.SKIPPED),
                      outcome.output, pinged)
        except StateError as exc:  # the run is recorded; tidying waits for the next run
            log.warning("after run %s: %s", attempt.id, exc)

    return exit_code, after


def _tell(docroot: Docroot, task: Task, run_id: int, ok: bool, output: str,
          pinged: threading.Thread | None) -> None:
    """Ping, and notify if this run starts or ends a run of failures (alerts.py)."""
    from .. import alerts

    alerts.ping_end(task.ping, ok, output, pinged)
    run = docroot.store.get_run(run_id)
    if run is not None:
        alerts.notify_run(docroot.settings, docroot.store, run, alerts.targets(task.notify),
                          docroot.zone)


class Keeper:
    """What the supervisor does every second while the task runs: hold its locks again
    after their session went away, and renew its lease (PostgreSQL)."""

    def __init__(self, docroot: Docroot, task: Task, attempt: Attempt):
        self.docroot, self.task, self.attempt = docroot, task, attempt
        self.store, self.name = docroot.store, task.name
        self.renew_at = time.monotonic() + LEASE / 3
        warn_after = task.seconds("warn_after")
        self.warn_at = time.monotonic() + warn_after if warn_after else None

    def __call__(self) -> None:
        if self.warn_at is not None and time.monotonic() >= self.warn_at:
            self.warn_at = None
            self._running_long()
        try:
            lost = self.store.keep_locks()
            if self.store.leases and time.monotonic() >= self.renew_at:
                self.store.update_run_if(self.attempt, lease=now() + LEASE)
                self.renew_at = time.monotonic() + LEASE / 3
        except Exception as exc:  # the next tick tries again
            log.warning("task %r: its locks and lease could not be kept: %s", self.name, exc)
            return
        if lost:
            log.warning("task %r: its locks were lost with their session and taken by another "
                        "process meanwhile (%s)", self.name, ", ".join(lost))


    def _running_long(self) -> None:
        """Say once that the run goes on past its task's warn_after (a thread sends it)."""
        log.warning("task %r: run %s is still running after warn_after (%g s)", self.name,
                    self.attempt.id, self.task.seconds("warn_after"))
        doc, task, run_id = self.docroot, self.task, self.attempt.id
        if not (task.notify or doc.settings.notify):
            return

        def tell() -> None:
            from .. import alerts

            try:
                run = doc.store.get_run(run_id)
            except StateError as exc:
                log.error("reqcron: cannot say run %s runs long: %s", run_id, exc)
                return
            if run is not None and run.status == Status.RUNNING:
                alerts.notify_run(doc.settings, doc.store, run, alerts.targets(task.notify),
                                  doc.zone, event=alerts.RUNNING_LONG)

        import threading

        # Not a daemon: a run that ends meanwhile still lets the message go out.
        threading.Thread(target=tell, name="reqcron-notify").start()


def _leased_elsewhere(store: Store, name: str, attempt: Attempt | None) -> bool:
    """Whether another run of ``name`` still holds a live lease: its lock went with a lost
    session, and the task lock that came free is not a sign that it ended."""
    if not store.leases:
        return False
    current = now()
    mine = attempt.id if attempt is not None else None
    return any(r.lease is not None and r.lease > current and r.id != mine
               for r in store.runs(name, 20, (Status.RUNNING,)))


def _record_not_run(
    docroot: Docroot, name: str, attempt: Attempt | None, trigger: Trigger, started: float,
    why: str,
) -> None:
    fields: dict[str, Any] = {
        "status": Status.SKIPPED,
        "start": started,
        "end": now(),
        "error": why,
        "exit_code": ExitCode.NOT_RUN,
    }
    if attempt is None or not docroot.store.update_run_if(attempt, **fields):
        docroot.store.add_run(
            Run(task=name, trigger=trigger, created=started, **fields), merge=True
        )
