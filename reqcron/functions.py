"""Function tasks: ``@cron`` and ``@every`` turn a plain function into a Task subclass.

The class is attached to the function as ``__reqcron_task__``, where the
loader finds it; the function itself is returned unchanged, so it can still
be called directly.  A schedule that does not hold (a bad cron string, a
minute out of range) is reported when the tasks are loaded, as for a class:
one bad function must not keep the rest of ``__tasks__.py`` from loading.
"""

from __future__ import annotations

from datetime import timedelta

from .errors import ScheduleError
from .task import Task
from .task_base import TaskBase

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])
    Field = int | Iterable[int] | None

#: Task attributes that are a schedule form, or make no sense for a function.
_NOT_KEYWORDS = frozenset({"cron", "every", "at", "abstract"})


def cron(
    expr: str | None = None,
    *,
    minutes: Field = None,
    hours: Field = None,
    days: Field = None,
    months: Field = None,
    days_of_week: Field = None,
    **attributes: Any,
) -> Callable[[F], F]:
    """Make the decorated function a task run on a cron schedule.

    Give a cron expression, or autocron's keyword fields: each an int or a
    list of ints, left out meaning every value; ``days_of_week`` counts
    0 = Monday.  Other keywords set Task attributes (``timeout=60``, ``name=``).
    """
    if callable(expr):
        raise TypeError('@cron needs parentheses: @cron("30 9 * * *") or @cron(minutes=[30])')
    fields = {"minutes": minutes, "hours": hours, "days": days, "months": months,
              "days_of_week": days_of_week}
    given = [k for k, v in fields.items() if v is not None]
    if expr is not None and given:
        raise TypeError(f"@cron() got a cron expression and {', '.join(given)}; give one form")
    _check_keywords("cron", "its schedule is a cron expression or minutes=, hours=, days=, "
                    "months=, days_of_week=", attributes)
    problem = None
    if expr is None:
        from .schedule.forms import lists_to_cron

        try:
            expr = lists_to_cron(minutes, hours, days, months, days_of_week)
        except ValueError as exc:
            problem = str(exc)

    def decorate(fn: F) -> F:
        return _attach(fn, "cron", {"cron": expr}, attributes, problem)

    return decorate


def every(
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    weeks: float = 0,
    **attributes: Any,
) -> Callable[[F], F]:
    """Make the decorated function a task run at a fixed interval of real time.

    Other keywords set Task attributes (``timeout=60``, ``anchor=``, ``name=``).
    """
    _check_keywords("every", "its interval is seconds=, minutes=, hours=, days= or weeks=",
                    attributes)
    interval: timedelta | None = None
    problem = None
    try:
        interval = timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days,
                             weeks=weeks)
    except (TypeError, OverflowError) as exc:
        problem = f"every cannot be made of those keywords: {exc}"

    def decorate(fn: F) -> F:
        return _attach(fn, "every", {"every": interval}, attributes, problem)

    return decorate


def _keywords() -> list[str]:
    # Task's class attributes, read off the class so that one added there is
    # a keyword here too.
    return sorted(
        name for name, kind in TaskBase.__annotations__.items()
        if "ClassVar[" in str(kind) and name not in _NOT_KEYWORDS
    )


def _check_keywords(decorator: str, schedule: str, attributes: dict[str, Any]) -> None:
    """Refuse a keyword that is neither the schedule's (``schedule`` says which) nor a Task
    attribute, naming both kinds: a misspelt interval (``secs=``) is the likely one."""
    allowed = _keywords()
    unknown = [k for k in attributes if k not in allowed]
    if unknown:
        raise TypeError(
            f"@{decorator}() got an unexpected keyword {unknown[0]!r}: {schedule}; other "
            f"keywords must be Task attributes: {', '.join(allowed)}"
        )


def _attach(fn: F, decorator: str, schedule: dict[str, Any], attributes: dict[str, Any],
            problem: str | None) -> F:
    """Build the Task subclass that runs ``fn`` and hang it on ``fn``."""
    code = getattr(fn, "__code__", None)
    if code is None or isinstance(fn, type):
        raise TypeError(f"@{decorator}() goes on a function, not on {fn!r}")
    if "__reqcron_task__" in fn.__dict__:
        # Only one class can hang on the function: a second schedule would be lost.
        raise TypeError(f"{fn.__qualname__}() is a task already: give it one @cron or @every")
    defaults = len(getattr(fn, "__defaults__", None) or ())
    kw_defaults = len(getattr(fn, "__kwdefaults__", None) or {})
    if code.co_argcount > defaults or code.co_kwonlyargcount > kw_defaults:
        raise TypeError(f"{fn.__qualname__}() must take no arguments: a task run calls it "
                        "with none")

    def run(self: Task) -> Any:
        return fn()

    run.__wrapped__ = fn  # type: ignore[attr-defined]  # the loader's line for errors
    namespace: dict[str, Any] = {
        "__module__": fn.__module__,
        "__qualname__": fn.__qualname__,
        "__doc__": fn.__doc__,
        "name": fn.__name__,
        **schedule,
        **attributes,
        "run": run,
    }
    if problem is not None:
        # Raised where the loader creates the task, so it is this task's error alone.
        def __init__(self: Task) -> None:
            Task.__init__(self)
            raise ScheduleError(self.name, problem)

        namespace["__init__"] = __init__
    cls = type(fn.__name__, (Task,), namespace)
    assert issubclass(cls, Task)
    fn.__reqcron_task__ = cls  # type: ignore[attr-defined]
    return fn
