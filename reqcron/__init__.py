"""reqcron: a built-in scheduler for any WSGI application, with no daemon and no cron.

Only ``Task`` and the errors are imported eagerly, so that a task process
starts fast; the rest loads on first use.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    DocrootError,
    ReqCronError,
    ScheduleError,
    StateError,
    TaskLookupError,
)
from .task import Task

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from .calls.delay import delay, set_eager
    from .calls.result import Result
    from .engine.docroot import Docroot
    from .functions import cron, every
    from .records import Status, Trigger
    from .web.wsgi import ReqCron

__all__ = [
    "ConfigError",
    "Docroot",
    "DocrootError",
    "ReqCron",
    "ReqCronError",
    "Result",
    "ScheduleError",
    "StateError",
    "Status",
    "Task",
    "TaskLookupError",
    "Trigger",
    "cron",
    "delay",
    "every",
    "set_eager",
]
__version__ = "0.1.0"

_LAZY = {
    "Docroot": "engine.docroot",
    "ReqCron": "web.wsgi",
    "Result": "calls.result",
    "delay": "calls.delay",
    "set_eager": "calls.delay",
    "Status": "records",
    "Trigger": "records",
    "cron": "functions",
    "every": "functions",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reqcron' has no attribute {name!r}")
