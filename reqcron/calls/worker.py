"""A forked child that runs deferred calls one after another, each supervised like a run.

Forking a child per call costs ~2 ms a call (fork, set-up, exit, reap),
which a burst of 1,000 calls feels; a child kept for the next call costs a
pipe round trip.  Each call keeps a run's isolation where it matters: its
own timeout (the child is stopped, its stack kept, and a fresh child runs
the next call), its own output and its own record; a call that kills its
process takes no other call with it.  Module state does persist between
the calls of one child, as in any worker pool.

Protocol: the supervisor writes a call (one line of JSON) on the command
pipe; the child answers on the result pipe with a line giving the call's
timeout, runs it, writes a marker on its output pipe (so the output splits
per call) and a line of report.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

from ..engine.stored_calls import Refused
from ..limits import OUTPUT_LIMIT, RESULT_READ_LIMIT, TRACEBACK_LIMIT
from ..run.stopping import STOP_GRACE, Stopper, pidfd, signal_group
from ..run.supervise import Outcome, _drained, _outcome, _Sink

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from ..task_base import TaskBase as Task



class CallWorker:
    """The supervisor's half: hands calls to a child, starting a fresh one when needed."""

    def __init__(self, *, docroot: Path, config: Mapping[str, Any], database: str | None,
                 build: Callable[[str], Task], close_in_child: tuple[int, ...]):
        self._docroot, self._config, self._database = docroot, config, database
        self._build = build  # call JSON -> the task whose run() makes the call (in the child)
        self._close = close_in_child
        self._pid = 0
        self._marker = b""
        # A stop asked of this process (SIGTERM, ^C): the current call finishes, no other.
        self.stop_signal: list[int] = []

    # -- the child ------------------------------------------------------------------

    def _start(self) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self._res_r, res_w = os.pipe()
        self._stack_r, stack_w = os.pipe()
        life_r, self._life_w = os.pipe()
        self._marker = f"\n\0reqcron-call-end-{os.urandom(8).hex()}\0\n".encode()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its pipes
            for fd in (*self._close, self._cmd_w, self._out_r, self._res_r, self._stack_r,
                       self._life_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            os.setpgid(0, 0)
            self._serve(cmd_r, out_w, res_w, stack_w, life_r)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        for fd in (cmd_r, out_w, res_w, stack_w, life_r):
            os.close(fd)
        self._pid = pid
        self._exited = pidfd(pid)
        self._stack = _Sink(TRACEBACK_LIMIT)  # the child's: its header line, then any dump

    def _serve(self, cmd_r: int, out_w: int, res_w: int, stack_w: int,
               life_r: int) -> None:  # pragma: no cover - runs in the child
        from ..run.child import _trace, bind_context, run_one, send, set_up

        try:
            stopping = set_up(out_w, stack_w, life_r)
            commands = os.fdopen(cmd_r, "rb")
            for line in commands:
                try:
                    task = self._build(line.decode())
                except BaseException as exc:  # refused, or an import that fails
                    refused = isinstance(exc, Refused)
                    report = {"ok": False, "refused": refused,
                              "error": f"refused: {exc}" if refused else _one_line(exc),
                              "traceback": None if refused else _trace(exc)}
                    send(res_w, {"timeout": None})
                else:
                    send(res_w, {"timeout": task.seconds("timeout"),
                                 "grace": task.seconds("stop_grace")})
                    report = run_one(task, lambda t=task: bind_context(  # type: ignore[misc]
                        t, stopping, docroot=self._docroot, config=self._config,
                        database=self._database, is_disabled=lambda: False))
                os.write(1, self._marker)
                send(res_w, report)
        finally:
            os._exit(0)

    def _stop_child(self) -> None:
        """Kill the child and what it started; reap it unless that happened already."""
        if not self._pid:
            return
        pid, self._pid = self._pid, 0
        signal_group(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by run() already
            pass
        for fd in (self._cmd_w, self._out_r, self._res_r, self._stack_r, self._life_w,
                   self._exited):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        """End the child (between calls it waits for a command: nothing is cut short)."""
        self._stop_child()

    # -- one call ---------------------------------------------------------------------

    def run(self, call: str) -> tuple[Outcome, bool]:
        """Run the call (its JSON) in the child; return its outcome and whether it was refused."""
        command = call.encode().replace(b"\n", b" ") + b"\n"
        if not self._pid:
            self._start()
        try:
            os.write(self._cmd_w, command)
        except BrokenPipeError:  # the child died between calls: a fresh one
            self._stop_child()
            self._start()
            os.write(self._cmd_w, command)
        # The call's timeout counts from here, its import included: a module that hangs
        # at import must not keep the process (and its share of max_processes) for good.
        began = time.monotonic()
        output = _Sink(OUTPUT_LIMIT * 4, keep_end=True)
        lines = bytearray()
        reports: list[dict[str, Any]] = []
        pending = bytearray()  # output not yet known to come before the marker
        ended = False
        status: int | None = None
        stop = Stopper(self._pid, STOP_GRACE)
        timeout = _stated_timeout(call)  # as @delay(timeout=...) gave it, until the child says
        stop.set_timeout(timeout)
        while True:
            watched = [self._out_r, self._res_r, self._stack_r]
            if status is None and self._exited is not None:
                watched.append(self._exited)
            ready = select.select(watched, [], [], 0.2 if self._exited is not None else 0.01)[0]
            for fd in ready:
                if fd == self._exited:
                    continue
                chunk = os.read(fd, 65536)
                if fd == self._out_r:
                    pending += chunk
                    at = pending.find(self._marker)
                    if at >= 0:
                        output.add(bytes(pending[:at]))
                        del pending[:at + len(self._marker)]
                        ended = True
                    elif len(pending) > 65536:  # keep only what could start the marker
                        keep = len(self._marker)
                        output.add(bytes(pending[:-keep]))
                        del pending[:-keep]
                elif fd == self._res_r:
                    lines += chunk[:RESULT_READ_LIMIT]
                    while b"\n" in lines:
                        line, _, rest = bytes(lines).partition(b"\n")
                        lines = bytearray(rest)
                        reports.append(json.loads(line))
                        if len(reports) == 1:
                            timeout = reports[0].get("timeout")
                            stop.grace = reports[0].get("grace") or STOP_GRACE
                            stop.deadline = began + timeout if timeout else None
                elif chunk:
                    self._stack.add(chunk)
            if status is None:
                done, code = os.waitpid(self._pid, os.WNOHANG)
                if done:
                    status = code
            if len(reports) >= 2 and ended:
                return self._outcome(0, reports[1], stop.timed_out, output, timeout)
            if status is not None:  # the child died during the call
                output.add(bytes(pending))
                _drained({self._out_r: output, self._stack_r: self._stack})
                report = reports[1] if len(reports) >= 2 else {}
                outcome = self._outcome(status, report, stop.timed_out, output, timeout)
                self._stop_child()  # what the call started goes with it
                return outcome
            # A stop asked of this process (SIGTERM) lets the current call finish
            # within its own timeout; the drainer then exits (drain.py).
            stop.check([])

    def _outcome(self, status: int, report: dict[str, Any], timed_out: bool, output: _Sink,
                 timeout: float | None) -> tuple[Outcome, bool]:
        result = _Sink(RESULT_READ_LIMIT)
        if report:
            result.add(json.dumps(report).encode())
        outcome = _outcome(status, timed_out, [], output, result,
                           self._stack if status else _Sink(0), timeout)
        return outcome, bool(report.get("refused"))


def _stated_timeout(call: str) -> float | None:
    """The timeout a call's JSON carries (``@delay(timeout=…)``), if it is readable."""
    try:
        value = json.loads(call).get("timeout")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

