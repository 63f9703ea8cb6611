"""A deferred call as the state keeps it: what to run, with what, and how to retry it.

A call is a row of the run history (so it has an id, shows in ``reqcron
history`` and on the status page, and is claimed like a run) whose ``call``
column holds this JSON.  Only JSON goes in: the call is checked in the
caller, at the call, so a bad argument is the caller's TypeError and never
a failure found later in the background.
"""

from __future__ import annotations

import json

from ..limits import CALL_LIMIT
from ..records import Record, Run, Status, Trigger
from ..store.rows import Attempt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from ..store import Store

#: A call deferred during a request waits this long for its response to be sent
#: (the middleware brings it forward then); a server that dies meanwhile does
#: not lose it, it only runs late.
HOLD = 30.0
#: Seconds before the first retry; each further one waits twice as long.
BACKOFF = 2.0
BACKOFF_MAX = 3600.0
#: The task name of a drain slot's lock: max_processes of them per DOCROOT.
#: Not a valid task name, so never a task's.
SLOT_LOCK = "~calls-{}"
#: The module name a function of __tasks__.py is known by, on every host.
TASKS_MODULE = "__tasks__"


class Refused(Exception):
    """The queue names something that is not a deferred function or task: run nothing."""


class Call(Record):
    """What a deferred call runs: a function by import name, or a task by name."""

    __slots__ = ("target", "task", "args", "kwargs", "retries", "timeout", "path", "token")

    def __init__(self, target: str, args: list[Any], kwargs: dict[str, Any], *,
                 task: bool = False, retries: int = 0, timeout: float | None = None,
                 path: list[str] | None = None, token: str | None = None):
        self.target = target  # "module:qualname", or a task's name
        self.task = task  # True: Task.delay of the task named ``target``
        self.args = args
        self.kwargs = kwargs
        self.retries = retries
        self.timeout = timeout
        self.path = path or []  # the caller's sys.path, so the task process finds the module
        self.token = token  # set while the call waits in a host's spool (call_spool.py)

    def encode(self) -> str:
        """The call as JSON; TypeError for an argument that is not JSON."""
        for i, arg in enumerate(self.args, 1):
            check_json(arg, f"argument {i} of {self.target}")
        for key, arg in self.kwargs.items():
            check_json(arg, f"argument {key!r} of {self.target}")
        data = {"target": self.target, "task": self.task, "args": self.args,
                "kwargs": self.kwargs, "retries": self.retries, "timeout": self.timeout,
                "path": self.path}
        if self.token is not None:
            data["token"] = self.token
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
        if len(text) > CALL_LIMIT:
            raise ValueError(f"the arguments of {self.target} are {len(text)} characters as "
                             f"JSON, over the limit of {CALL_LIMIT}; pass a key to the data "
                             "instead")
        return text

    @classmethod
    def decode(cls, text: str) -> Call:
        data = json.loads(text)
        return cls(str(data["target"]), list(data.get("args") or []),
                   dict(data.get("kwargs") or {}), task=bool(data.get("task")),
                   retries=int(data.get("retries") or 0), timeout=data.get("timeout"),
                   path=list(data.get("path") or []), token=data.get("token"))


def check_json(value: Any, where: str) -> None:
    """Raise TypeError naming the first part of ``value`` that JSON does not hold as it is."""
    pending: list[tuple[Any, str]] = [(value, where)]
    while pending:
        item, at = pending.pop()
        if item is None or isinstance(item, bool | int | str):
            continue
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise TypeError(f"{at} is {item!r}, which JSON cannot hold")
            continue
        if isinstance(item, list | tuple):
            pending += [(v, f"{at}[{i}]") for i, v in enumerate(item)]
            continue
        if isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"{at} has the key {key!r}; JSON keys are strings")
                pending.append((v, f"{at}[{key!r}]"))
            continue
        raise TypeError(f"{at} is a {type(item).__name__}, not JSON (str, int, float, bool, "
                        "None, list or dict): deferred calls take JSON only")


def label(run: Run, width: int = 60) -> str:
    """A run as people read it: a call shows its function and (shortened) arguments."""
    if run.call is None:
        return run.task
    try:
        call = Call.decode(run.call)
    except (ValueError, KeyError, TypeError):
        return run.task
    name = call.target.rpartition(":")[2] if not call.task else call.target
    shown = [json.dumps(a) for a in call.args]
    shown += [f"{k}={json.dumps(v)}" for k, v in call.kwargs.items()]
    text = f"{name}({', '.join(shown)})"
    return text if len(text) <= width else text[:width - 2] + "…)"


def call_dict(run: Run) -> dict[str, Any]:
    """A call as the JSON of ``reqcron history --json`` shows it."""
    data: dict[str, Any] = {"label": label(run), "attempts": run.attempts}
    try:
        call = Call.decode(run.call or "")
    except (ValueError, KeyError, TypeError):
        return data
    data.update(target=call.target, task=call.task, args=call.args, kwargs=call.kwargs,
                retries=call.retries, timeout=call.timeout)
    return data


def new_run(call: Call, created: float, due: float) -> Run:
    """The queued row of ``call``; raises TypeError/ValueError for what cannot be stored."""
    name = call.target
    return Run(task=name, trigger=Trigger.CALL, status=Status.QUEUED, created=created,
               call=call.encode(), due=due)


def backoff(attempts: int) -> float:
    """Seconds to wait before the next attempt after ``attempts`` failed ones."""
    return float(min(BACKOFF * 2 ** max(attempts - 1, 0), BACKOFF_MAX))


#: How a call's error starts when its return value was not JSON: trying again would only
#: repeat what the call did (a mail sent twice), so such a call is not retried.
NOT_JSON_RETURN = "TypeError: the return value is"


def end_attempt(store: Store, run: Run, now: float, status: str, **fields: Any) -> bool:
    """Record how an attempt of a running call ended: queued again while retries remain.

    Conditional on the attempt ``run`` is (as read): returns False when the
    row is not that attempt any more (another process recorded it first).
    """
    return store.update_run_if(Attempt.of(run), **end_values(run, now, status, **fields))


def end_values(run: Run, now: float, status: str, **fields: Any) -> dict[str, Any]:
    """The fields that end an attempt of ``run``: queued again while retries remain."""
    retries = 0
    if run.call is not None:
        try:
            retries = Call.decode(run.call).retries
        except (ValueError, KeyError, TypeError):
            pass
    final = str(fields.get("error") or "").startswith(NOT_JSON_RETURN)
    if status != Status.OK and run.attempts <= retries and not final:
        return {"status": Status.QUEUED, "due": now + backoff(run.attempts), **fields}
    return {"status": status, "end": now, **fields}
