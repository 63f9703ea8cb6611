"""Task, the class ``__tasks__.py`` subclasses: TaskBase and ``delay``.

Kept light on purpose: a task process imports it first, and the schedule
machinery (croniter) is only imported when a schedule is compiled.
"""

from __future__ import annotations

from .task_base import TaskBase

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from .calls.result import Result


class Task(TaskBase):
    """A unit of scheduled work; subclass it in ``__tasks__.py`` and write ``run()``."""

    abstract = True

    @classmethod
    def delay(cls, *args: Any, **kwargs: Any) -> Result[Any]:
        """Run this task with these arguments (JSON) in a task process, soon; see ``@delay``.

        For a task whose ``run()`` takes arguments; returns a Result at once.
        """
        from .calls.delay import defer_task

        return defer_task(cls, args, kwargs)
