"""reqcron's exceptions, each building its one-sentence message itself; and the exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of ``runtask`` and ``reqcron`` (the README's table), in one place."""

    OK = 0  # the task ran and returned; or the command found nothing wrong
    FAILED = 1  # the task raised or its process died; a command found a problem
    USAGE = 2  # usage error, unknown task, files that do not load, unusable state
    NOT_RUN = 75  # not run: the previous run still goes, or the task is disabled
    TIMEOUT = 124  # stopped by its timeout
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

    @classmethod
    def worst(cls, codes: Sequence[int]) -> int:
        """The code that says most of several runs': usage, then timeout, failure, busy, ok.

        A code of none of these (a task process killed by a signal) counts as a failure.
        """
        rank: dict[int, int] = {cls.OK: 0, cls.NOT_RUN: 1, cls.FAILED: 2, cls.TIMEOUT: 3,
                                cls.USAGE: 4}
        return max(codes, key=lambda code: rank.get(code, 2), default=cls.OK)


class ReqCronError(Exception):
    """Base of every error reqcron raises on purpose."""


class ScheduleError(ReqCronError, ValueError):
    """A task's schedule is invalid."""

    def __init__(self, task: str, problem: str):
        self.task = task
        self.problem = problem
        super().__init__(f"task {task!r} has an invalid schedule: {problem}")


class ConfigError(ReqCronError, ValueError):
    """reqcron.toml cannot be used."""

    def __init__(self, path: str, problem: str, line: int | None = None):
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")


class DocrootError(ReqCronError, FileNotFoundError):
    """The DOCROOT does not exist, is not a directory, or has no tasks."""

    def __init__(self, path: str, problem: str = "does not exist or is not a directory"):
        self.path = path
        super().__init__(f"DOCROOT {path!r} {problem}")


class TaskLookupError(ReqCronError, LookupError):
    """No registered task has that name."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        super().__init__(f"no task named {name!r}; known tasks: {listed}")


class StateError(ReqCronError, OSError):
    """The state directory or database cannot be used."""

    def __init__(self, path: str, problem: str):
        self.path = path
        super().__init__(f"state at {path} cannot be used: {problem}")


class NotRun(ReqCronError):
    """The task was not run; ``exit_code`` says why (2: usage or load error, 75: busy)."""

    def __init__(self, exit_code: int, message: str):
        self.exit_code = exit_code
        super().__init__(message)


class UsageError(ReqCronError, ValueError):
    """A command or a call was asked something it cannot do; the message says what."""
