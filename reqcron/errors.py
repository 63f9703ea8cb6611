"""reqcron's exceptions: each builds its one-sentence message itself."""

from __future__ import annotations


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
