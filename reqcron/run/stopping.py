"""A task's process group as its supervisor steers it: seeing its leader end, asking it
to stop (a timeout, a stop asked of the supervisor), killing it after its grace.

Shared by the supervisor of a scheduled run (supervise.py) and the worker that runs
deferred calls (calls/worker.py).
"""

from __future__ import annotations

import os
import signal
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a task sets no stop_grace
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def catch_stop_signals(into: list[int]) -> dict[int, Any]:
    """Note a stop asked of this supervisor in ``into``; return the handlers to restore."""
    return {s: signal.signal(s, lambda signum, _frame: into.append(signum))
            for s in STOP_SIGNALS}


def restore_signals(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


class Stopper:
    """When a task's process group is asked to stop (its timeout, or a stop asked of the
    supervisor: SIGTERM) and when it is killed (SIGKILL, its grace later)."""

    __slots__ = ("pgid", "grace", "deadline", "kill_at", "timed_out")

    def __init__(self, pgid: int, grace: float):
        self.pgid, self.grace = pgid, grace
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.timed_out = False

    def set_timeout(self, timeout: float | None) -> None:
        """Start the clock of a run's timeout (None: no timeout)."""
        self.deadline = time.monotonic() + timeout if timeout else None

    def check(self, stop_signal: list[int], alive: bool = True) -> None:
        """Send what is due now; call this at every turn of the supervisor's loop."""
        clock = time.monotonic()
        if self.kill_at is None and self.deadline is not None and clock >= self.deadline:
            self.timed_out = True
            signal_group(self.pgid, signal.SIGTERM)
            self.kill_at = clock + self.grace
        elif self.kill_at is None and stop_signal:
            signal_group(self.pgid, signal.SIGTERM)
            self.kill_at = clock + self.grace
        elif self.kill_at is not None and clock >= self.kill_at and alive:
            signal_group(self.pgid, signal.SIGKILL)
            self.kill_at = float("inf")


#: Whether a child's exit can be seen without reaping it (waitid's WNOWAIT).
PEEK = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


def exit_status(pid: int) -> int | None:
    """The child's wait status once it has exited, else None.

    Seen without reaping it where the system allows: while its zombie holds
    the pid, which is also its group's id, no new process can take that id,
    so a signal sent to the group after the child ended never reaches a
    stranger.  The caller reaps it last.
    """
    if not PEEK:
        done, code = os.waitpid(pid, os.WNOHANG)
        return code if done else None
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8  # as waitpid() reports an exit
    return info.si_status & 0x7F  # killed (or dumped) by this signal


def pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or the child is gone already
        return None


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to the task's process group: the task and what it started."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):  # the group is gone
        pass
