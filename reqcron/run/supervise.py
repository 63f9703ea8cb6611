"""Run a task in a forked child: relay its output, stop it on timeout or signal, report.

The runtask process supervises; the task runs in a forked child, so that a
timeout can end in SIGKILL and still be recorded.  The child:

- leads its own process group, so a stop (SIGTERM, SIGKILL stop_grace
  later) reaches the processes it started too;
- closes the caller's lock fds, so nothing it forks keeps the locks;
- dies with its supervisor (a lifeline pipe), so a SIGKILLed runtask
  leaves nothing behind holding the task's lock;
- writes its stack to a pipe when asked to stop (faulthandler), so a
  timed-out run says where it was stuck;
- caps what it reports (limits.py) before serialising it; the supervisor
  caps what it reads again.

Knows nothing of the DOCROOT's state: the caller passes what the run needs
and records the Outcome.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from ..limits import (
    OUTPUT_LIMIT,
    RESULT_READ_LIMIT,
    TRACEBACK_LIMIT,
    cap,
)
from ..records import Record, Status
from . import child as taskchild
from .child import bind_context, run_child
from .stopping import (
    PEEK,
    STOP_GRACE,
    Stopper,
    catch_stop_signals,
    exit_status,
    pidfd,
    restore_signals,
    signal_group,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from ..task_base import TaskBase as Task



class Outcome(Record):
    """How a supervised run ended: its status and what it left behind."""

    __slots__ = ("status", "output", "return_value", "error", "traceback", "stuck_at")

    def __init__(
        self,
        status: Status,
        output: str,
        return_value: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        # Where a stopped run was when asked to stop: "file:line in function".
        stuck_at: str | None = None,
    ):
        self.status = status
        self.output = output
        self.return_value = return_value
        self.error = error
        self.traceback = traceback
        self.stuck_at = stuck_at


def supervise(
    task: Task,
    *,
    docroot: Path,
    config: Mapping[str, Any],
    # reqcron.toml's ``database``: gives Task.database, opened on first use.
    database: str | None,
    # Called in the child, at most once per DISABLED_CHECK_EVERY seconds,
    # from Task.proceed(): True turns proceed() False.
    is_disabled: Callable[[], bool],
    # Relay the task's output to this process's stdout as it comes.
    echo: bool,
    # Descriptors the child must not keep (locks it would hold past its life).
    close_in_child: Sequence[int] = (),
    # Called in this process about once a second while the task runs (keeping its
    # locks); its errors are the caller's to catch.
    tick: Callable[[], None] | None = None,
) -> Outcome:
    """Fork the task's process, relay its output, stop it on timeout or signal."""
    out_r, out_w = os.pipe()
    res_r, res_w = os.pipe()
    stack_r, stack_w = os.pipe()  # the task's stack, written when it is asked to stop
    life_r, life_w = os.pipe()  # EOF in the child when the supervisor dies
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its pipes
        os.setpgid(0, 0)  # its own group, so a stop reaches what it starts too
        for fd in set(close_in_child):  # else a helper the task forks keeps them, and its locks
            try:
                os.close(fd)
            except OSError:
                pass  # the child must never return into the supervisor's code
        os.close(out_r)
        os.close(res_r)
        os.close(stack_r)
        os.close(life_w)
        run_child(
            task,
            out_w,
            res_w,
            stack_w,
            life_r,
            lambda stopping: bind_context(
                task,
                stopping,
                docroot=docroot,
                config=config,
                database=database,
                is_disabled=is_disabled,
            ),
        )

    try:
        os.setpgid(pid, pid)  # here too: whichever runs first, the group exists before a stop
    except OSError:  # the child got there first, or is already gone
        pass
    os.close(out_w)
    os.close(res_w)
    os.close(stack_w)
    os.close(life_r)
    stop_signal: list[int] = []
    previous = catch_stop_signals(stop_signal)
    timeout = task.seconds("timeout")
    stop = Stopper(pid, task.seconds("stop_grace") or STOP_GRACE)
    stop.set_timeout(timeout)
    output = _Sink(OUTPUT_LIMIT * 4, keep_end=True, echo=echo)  # bytes: up to 4 a character
    result = _Sink(RESULT_READ_LIMIT)
    stack = _Sink(TRACEBACK_LIMIT)
    streams = {out_r: output, res_r: result, stack_r: stack}
    status: int | None = None
    # Readable once the child has exited: its end is seen at once, not at the
    # next poll (a process running many calls waits for many children).
    exited = pidfd(pid)
    pause = 0.001
    next_tick = time.monotonic() + TICK_EVERY
    try:
        while True:
            watched = [*streams, *([exited] if exited is not None and status is None else [])]
            if watched:
                ready, _, _ = select.select(watched, [], [], 0.2)
                for fd in ready:
                    if fd == exited:
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        del streams[fd]
                        os.close(fd)
                        continue
                    streams[fd].add(chunk)
            else:  # no pidfd (not Linux): poll, soon at first
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            if status is None:
                status = exit_status(pid)
            if status is not None and (not streams or _drained(streams)):
                break
            stop.check(stop_signal, alive=status is None)
            if tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_EVERY
                tick()
        if stop.kill_at is not None:  # a stopped run leaves nothing of its group behind
            signal_group(pid, signal.SIGKILL)
        if PEEK:
            os.waitpid(pid, 0)  # its zombie, kept until the group's last signal
    finally:
        restore_signals(previous)
        for fd in streams:
            os.close(fd)
        if exited is not None:
            os.close(exited)
        os.close(life_w)
    return _outcome(status, stop.timed_out, stop_signal, output, result, stack, timeout)


TICK_EVERY = 1.0  # seconds between calls of supervise()'s ``tick``
class _Sink:
    """What the supervisor keeps of one of the child's pipes: at most ``limit`` bytes."""

    __slots__ = ("data", "limit", "keep_end", "echo", "dropped")

    def __init__(self, limit: int, *, keep_end: bool = False, echo: bool = False):
        self.data = bytearray()
        self.limit = limit
        self.keep_end = keep_end  # keep the last bytes (output), else the first
        self.echo = echo
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        if self.echo:
            _echo(chunk)
        if self.keep_end:
            self.data += chunk
            excess = len(self.data) - self.limit
            if excess > 0:
                self.dropped += excess
                del self.data[:excess]
            return
        room = max(self.limit - len(self.data), 0)
        self.dropped += max(len(chunk) - room, 0)
        self.data += chunk[:room]


def _drained(streams: dict[int, _Sink]) -> bool:
    """Read what is left once the child is gone; grandchildren may keep pipes open."""
    for fd, sink in streams.items():
        for _ in range(64):  # a grandchild that keeps writing does not keep us here
            if not select.select([fd], [], [], 0)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            sink.add(chunk)
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
    output: _Sink,
    result: _Sink,
    stack: _Sink,
    timeout: float | None,
) -> Outcome:
    import json  # here and in _child after run(): not on the way to run()

    text = output.data.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    try:
        reported: dict[str, Any] = json.loads(result.data) if result.data else {}
    except ValueError:
        reported = {}
    if result.dropped:
        reported = {}
    out = Outcome(
        Status.FAILED,
        text,
        reported.get("return_value"),
        reported.get("error"),
        reported.get("traceback"),
    )
    code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    if timed_out:
        out.status = Status.TIMEOUT
        how = "and killed" if code < 0 else "and it stopped"
        out.error = out.error or f"stopped by its timeout of {timeout:g} s ({how})"
    elif code == 0 and reported.get("ok") and reported.get("skipped"):
        out.status, out.error = Status.SKIPPED, str(reported["skipped"])
    elif code == 0 and reported.get("ok"):
        out.status = Status.OK
    elif stop_signal and not reported:
        out.error = f"stopped by {signal.Signals(stop_signal[0]).name}"
    elif code < 0:
        out.error = f"its process died of {signal.Signals(-code).name}"
    elif result.dropped:
        out.error = f"its report was over {RESULT_READ_LIMIT} bytes and was dropped"
    elif not reported:
        out.error = f"its process exited with code {code} before run() returned"
    where, frames = (None, "")
    if out.status != Status.OK and stack.data:
        where, frames = _stack_at_stop(stack.data.decode("utf-8", "replace"))
    # The child always writes its thread ids first: frames only if it was asked to stop.
    if frames.strip():
        frames = cap(f"Stack when asked to stop:\n{frames}", TRACEBACK_LIMIT // 2)
        before = cap(out.traceback, TRACEBACK_LIMIT // 2, keep_end=True) if out.traceback else ""
        out.traceback = f"{before}\n{frames}" if before else frames
        out.stuck_at = where
    return out


def _stack_at_stop(dump: str) -> tuple[str | None, str]:
    """Read faulthandler's dump: return where the task's thread was, and its stacks.

    The dump starts with the child's own line naming its main thread (which
    runs the task) and its lifeline thread (left out); the main thread's
    frames from run_child outward are reqcron's, not the task's, and are cut.
    """
    import re  # the supervisor's alone: not on the child's way to run()

    thread_re = re.compile(r"(?:Current thread|Thread) 0x([0-9a-f]+) \(most recent call first\):$")
    frame_re = re.compile(r'  File "(.*)", line (\S+) in (.*)$')
    first, _, rest = dump.partition("\n")
    idents = first.split()[1:] if first.startswith("reqcron-threads ") else []
    main, lifeline = (idents + ["", ""])[:2]
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in rest.splitlines():
        header = thread_re.match(line)
        if header:
            ident = header.group(1).lstrip("0")
            if ident in blocks:  # a second stop's dump: the first one tells
                break
            current = blocks[ident] = []
        elif current is not None and line.startswith("  "):
            frame = frame_re.match(line)
            if frame and frame.group(3) == "run_child" and frame.group(1) == taskchild.__file__:
                current = None  # reqcron's own frames from here on
            else:
                current.append(line)
    task_frames = blocks.pop(main, None)
    blocks.pop(lifeline, None)
    if task_frames is None:  # not a dump we can read: keep it as it came
        return None, rest
    where = frame_re.match(task_frames[0]) if task_frames else None
    text = "".join(f"{line}\n" for line in task_frames)
    for ident, frames in blocks.items():
        text += f"\nThread 0x{ident} (most recent call first):\n"
        text += "".join(f"{line}\n" for line in frames)
    return (f"{where[1]}:{where[2]} in {where[3]}" if where else None), text
