"""What ``runtask`` does: check, lock, run the task in a child, enforce its timeout, record.

The runtask process supervises; the task runs in a forked child, so that a
timeout can end in SIGKILL and still be recorded.  The child dies with its
supervisor (PR_SET_PDEATHSIG), so a SIGKILLed runtask leaves nothing behind
holding the task's lock.  Never imports webob or watchdog; croniter only
when the task's own cron schedule must be read.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sqlite3
import sys
import time
import traceback

from . import locks
from .config import zone_named
from .errors import ReqCronError, TaskLookupError
from .exits import EXIT_FAILED, EXIT_NOT_RUN, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from .limits import OUTPUT_LIMIT, RETURN_VALUE_LIMIT
from .loader import load_tasks
from .records import Record, Run, Status, Trigger, now

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from .docroot import Docroot
    from .task import Task

log = logging.getLogger("reqcron")

DISABLED_CHECK_EVERY = 1.0  # seconds between proceed()'s looks at the enabled flag


class NotRun(ReqCronError):
    """The task was not run; ``exit_code`` says why (2: usage or load error, 75: busy)."""

    def __init__(self, exit_code: int, message: str):
        self.exit_code = exit_code
        super().__init__(message)


class _Outcome(Record):
    __slots__ = ("status", "exit_code", "output", "return_value", "error", "traceback")

    def __init__(
        self,
        status: Status,
        exit_code: int,
        output: str,
        return_value: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ):
        self.status = status
        self.exit_code = exit_code
        self.output = output
        self.return_value = return_value
        self.error = error
        self.traceback = traceback


def run_command(docroot_path: str, name: str, *, run_id: int | None = None,
                if_due: bool = False) -> int:
    """What ``runtask`` and ``reqcron run`` do: open the DOCROOT, run the task, close."""
    from .docroot import Docroot

    logging.basicConfig(level=logging.WARNING, format="runtask: %(message)s")
    docroot = Docroot(docroot_path)
    try:
        if run_id is None:  # a person or a crontab, not the server
            from .paths import owner_warning

            warning = owner_warning(docroot.path)
            if warning:
                sys.stderr.write(f"runtask: warning: {warning}\n")
        return run_task(docroot, name, run_id=run_id, if_due=if_due)
    finally:
        docroot.close()


def run_task(docroot: Docroot, name: str, *, run_id: int | None = None, echo: bool = True,
             if_due: bool = False) -> int:
    """Run task ``name`` of ``docroot`` now, in the foreground; return the exit code.

    With ``if_due`` (a crontab line of ``reqcron crontab``) it runs only if it
    claims the task's due slot, and exits 0 quietly when another trigger
    already started that slot: each slot runs once, whoever comes first.
    ``run_id`` is a run that ``Docroot.due()`` claimed and left pending; without
    it the run claims the task's slot if one is due (a crontab line), or is a
    manual run.  Raises NotRun for exit codes 2 and 75, with the reason.
    """
    store = docroot.store
    started = now()

    def refuse(code: int, message: str, status: Status = Status.FAILED) -> NotRun:
        if run_id is not None:
            store.update_run_if(
                run_id,
                Status.PENDING,
                status=status,
                start=started,
                end=now(),
                error=message,
                exit_code=code,
                pid=os.getpid(),
            )
        return NotRun(code, message)

    # A claimed run starts fast: its schedule was read and validated already.
    zone = None if run_id is not None else zone_named(docroot.zone_name())
    loaded = load_tasks(docroot.path, zone, only=name, compile_schedules=run_id is None)
    file_errors = [e for e in loaded.errors if e.task is None]
    if file_errors:
        raise refuse(EXIT_USAGE, "; ".join(str(e) for e in file_errors))
    task_errors = [e for e in loaded.errors if e.task == name]
    if task_errors:
        raise refuse(EXIT_USAGE, str(task_errors[0]))
    if name not in loaded.tasks:
        raise refuse(EXIT_USAGE, str(TaskLookupError(name, sorted(loaded.tasks))))
    task = loaded.tasks[name]

    trigger = Trigger.MANUAL
    if run_id is None:
        claim = docroot.claim_due(name)
        if claim is not None:
            run_id, trigger = claim.run_id, Trigger.CRON
        elif if_due:
            return EXIT_OK
    else:
        claimed = store.get_run(run_id)
        if claimed is None or claimed.task != name:
            raise NotRun(EXIT_USAGE, f"run {run_id} is not a claimed run of task {name!r}")
        trigger = Trigger(claimed.trigger)

    if not docroot.is_enabled(name):
        _record_not_run(docroot, name, run_id, trigger, started, "disabled")
        raise NotRun(EXIT_NOT_RUN, f"task {name!r} is disabled")
    task_lock = None
    if not task.overlap:
        task_lock = locks.take_task_lock(docroot.settings.state_dir, name)
        if task_lock is None:
            _record_not_run(
                docroot, name, run_id, trigger, started, "the previous run is still going"
            )
            raise NotRun(EXIT_NOT_RUN, f"task {name!r} is still running from before")
    run_fd, run_lock = locks.take_run_lock(docroot.settings.state_dir)
    try:
        docroot.reap(name)
        running: dict[str, Any] = {
            "status": Status.RUNNING,
            "start": started,
            "pid": os.getpid(),
            "lock": run_lock,
        }
        if run_id is None or not store.update_run_if(run_id, Status.PENDING, **running):
            run_id = store.add_run(Run(task=name, trigger=trigger, created=started, **running))
        outcome = _supervise(docroot, task, echo)
        store.update_run(
            run_id,
            status=outcome.status,
            end=now(),
            exit_code=outcome.exit_code,
            output=outcome.output,
            return_value=outcome.return_value,
            error=outcome.error,
            traceback=outcome.traceback,
        )
        store.prune(name, docroot.settings.history)
    finally:
        locks.release(run_fd, run_lock)
        if task_lock is not None:
            locks.release(task_lock)
    return outcome.exit_code


def _record_not_run(
    docroot: Docroot, name: str, run_id: int | None, trigger: Trigger, started: float, why: str
) -> None:
    fields: dict[str, Any] = {
        "status": Status.SKIPPED,
        "start": started,
        "end": now(),
        "error": why,
        "exit_code": EXIT_NOT_RUN,
    }
    if run_id is None or not docroot.store.update_run_if(run_id, Status.PENDING, **fields):
        docroot.store.add_run(
            Run(task=name, trigger=trigger, created=started, **fields), merge=True
        )


def _supervise(docroot: Docroot, task: Task, echo: bool) -> _Outcome:
    """Fork the task's process, relay its output, stop it on timeout or signal."""
    out_r, out_w = os.pipe()
    res_r, res_w = os.pipe()
    life_r, life_w = os.pipe()  # EOF in the child when the supervisor dies
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its pipes
        os.close(out_r)
        os.close(res_r)
        os.close(life_w)
        _child(docroot, task, out_w, res_w, life_r)

    os.close(out_w)
    os.close(res_w)
    os.close(life_r)
    stop_signal: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: stop_signal.append(signum))
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    timeout = task.seconds("timeout")
    grace = task.seconds("stop_grace") or 5.0
    deadline = time.monotonic() + timeout if timeout else None
    kill_at: float | None = None
    timed_out = False
    output = bytearray()
    result = bytearray()
    streams = {out_r: output, res_r: result}
    status: int | None = None
    try:
        while True:
            wait = 0.2
            if streams:
                ready, _, _ = select.select(list(streams), [], [], wait)
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        del streams[fd]
                        os.close(fd)
                        continue
                    streams[fd] += chunk
                    if fd == out_r:
                        del output[: -OUTPUT_LIMIT * 4]
                        if echo:
                            _echo(chunk)
            else:
                time.sleep(wait / 4)
            if status is None:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = code
            if status is not None and (not streams or _drained(streams)):
                break
            clock = time.monotonic()
            if kill_at is None and deadline is not None and clock >= deadline:
                timed_out = True
                os.kill(pid, signal.SIGTERM)
                kill_at = clock + grace
            elif kill_at is None and stop_signal:
                os.kill(pid, signal.SIGTERM)
                kill_at = clock + grace
            elif kill_at is not None and clock >= kill_at and status is None:
                os.kill(pid, signal.SIGKILL)
                kill_at = float("inf")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for fd in streams:
            os.close(fd)
        os.close(life_w)
    return _outcome(status, timed_out, stop_signal, output, result, timeout)


def _drained(streams: dict[int, bytearray]) -> bool:
    """Read what is left once the child is gone; grandchildren may keep pipes open."""
    for fd in list(streams):
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            streams[fd] += chunk
    return True


def _echo(chunk: bytes) -> None:
    try:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        pass


def _outcome(
    status: int | None,
    timed_out: bool,
    stop_signal: list[int],
    output: bytearray,
    result: bytearray,
    timeout: float | None,
) -> _Outcome:
    import json  # here and in _child after run(): not on the way to run()

    text = output.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    try:
        reported: dict[str, Any] = json.loads(result.decode("utf-8")) if result else {}
    except ValueError:
        reported = {}
    out = _Outcome(
        Status.FAILED,
        EXIT_FAILED,
        text,
        reported.get("return_value"),
        reported.get("error"),
        reported.get("traceback"),
    )
    code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    if timed_out:
        out.status, out.exit_code = Status.TIMEOUT, EXIT_TIMEOUT
        how = "and killed" if code < 0 else "and it stopped"
        out.error = out.error or f"stopped by its timeout of {timeout:g} s ({how})"
    elif code == 0 and reported.get("ok"):
        out.status, out.exit_code = Status.OK, EXIT_OK
    elif stop_signal and not reported:
        out.error = f"stopped by {signal.Signals(stop_signal[0]).name}"
    elif code < 0:
        out.error = f"its process died of {signal.Signals(-code).name}"
    elif not reported:
        out.error = f"its process exited with code {code} before run() returned"
    return out


def _child(docroot: Docroot, task: Task, out_w: int, res_w: int, lifeline: int) -> None:
    """Run the task in the forked child and report; never returns."""
    code = EXIT_FAILED
    report: dict[str, Any] = {"ok": False}
    try:
        _die_with_supervisor(lifeline)
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
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        _bind_context(docroot, task, stopping)
        value = task.run()
        report = {"ok": True, "return_value": _describe(value)}
        code = EXIT_OK
    except BaseException as exc:  # the task's failure is data, reported below
        # Leave out this function's own frame: the trace starts in the task.
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        trace = "".join(traceback.format_exception(type(exc), exc, tb))
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": trace}
        try:
            sys.stderr.write(trace)
        except Exception:
            pass
    finally:
        try:
            if task._database is not None:
                task._database.close()
        except Exception:
            pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            import json

            data = json.dumps(report).encode()
            while data:
                data = data[os.write(res_w, data) :]
        finally:
            os._exit(code)


def _bind_context(docroot: Docroot, task: Task, stopping: list[bool]) -> None:
    task.config = docroot.settings.config
    task.docroot = docroot.path
    checked = [0.0, False]

    def stop_requested() -> bool:
        if stopping:
            return True
        clock = time.monotonic()
        if clock - checked[0] >= DISABLED_CHECK_EVERY:
            checked[0] = clock
            try:
                checked[1] = not docroot.is_enabled(task.name)
            except ReqCronError:
                pass
        return bool(checked[1])

    task._stop_requested = stop_requested
    spec = docroot.settings.database
    if spec:
        task._open_database = lambda: open_database(spec, docroot.path)


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
    import json

    if value is None:
        return None
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:RETURN_VALUE_LIMIT]


def _die_with_supervisor(lifeline: int) -> None:
    """Kill this process as soon as its supervisor dies, so its locks die with it.

    The supervisor holds the only write end of ``lifeline``; the read sees
    EOF when it exits or is killed.  A pipe and a thread instead of
    prctl(PR_SET_PDEATHSIG): no ctypes to import, and it works beyond Linux.
    """
    import threading

    def watch() -> None:
        try:
            while os.read(lifeline, 1):
                pass
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="reqcron-lifeline", daemon=True).start()
