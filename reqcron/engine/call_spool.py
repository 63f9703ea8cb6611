"""Deferred calls that could not be stored: kept on this host, enqueued once the state is back.

A request must never fail because the state does (SPEC: "A request is
never failed by the state"): when storing a call fails, the call is kept
as a private file in the host's spool (beside the outcomes of spool.py)
under a random token, and its Result says ``spooled``.  The next process
of the site that reaches the state (the middleware's worker, ``reqcron
due``) stores it, once: the token travels in the stored call, so a
second enqueuer, or one that died between storing and removing the file,
finds it stored and only records where it went.  The id it got is left
beside the token for the Result that waits for it.

A call whose storing took longer than its request could wait
(calls/budget.py) is kept *in flight* (``call-TOKEN.pending``, with the pid
of the process still storing it): that process settles it (``settle``) once
its write ends, as stored or as waiting; an enqueuer takes it only when
that process is gone, or after IN_FLIGHT seconds, long past any write's
timeouts, so a late write and an enqueuer never both store it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..paths import ensure_private_dir
from ..records import Run
from .spool import put, spool_dir

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..store import Store

#: Seconds a stored call's id is kept beside its token for a Result that waits for it.
KEEP_IDS = 7 * 86400.0
#: Seconds after which a call in flight is an enqueuer's even while its process lives (its
#: write is bounded by the connection's timeouts: statement, TCP user timeout, connect).
IN_FLIGHT = 120.0
#: Seconds a call in flight of a dead process waits still: a statement its process sent
#: just before dying is done by then (the request path's statement timeout is 1 s).
SETTLE = 5.0


def _folder(state_dir: Path) -> Path:
    return spool_dir(state_dir)


def keep(state_dir: Path, token: str, run: Run, *, in_flight: bool = False) -> None:
    """Keep ``run`` (a queued call whose JSON holds ``token``) until it can be stored.

    ``in_flight``: this process is still storing it and will ``settle`` it.
    """
    folder = _folder(state_dir)
    ensure_private_dir(folder)
    data = {"task": run.task, "trigger": run.trigger, "status": run.status,
            "created": run.created, "call": run.call, "due": run.due}
    if in_flight:
        data["pid"] = os.getpid()
    put(folder / f"call-{token}.{'pending' if in_flight else 'json'}", json.dumps(data).encode())


def settle(state_dir: Path, token: str, run_id: int | None) -> None:
    """End call ``token``'s flight: stored as ``run_id``, or (None) left for an enqueuer."""
    folder = _folder(state_dir)
    pending = folder / f"call-{token}.pending"
    try:
        if run_id is not None:
            put(folder / f"call-{token}.id", str(run_id).encode())
            pending.unlink()
        else:
            os.replace(pending, folder / f"call-{token}.json")
    except FileNotFoundError:
        pass  # an enqueuer took it (its process looked dead), and stored it once


def stored_id(state_dir: Path, token: str) -> int | None:
    """The id call ``token`` got once it was stored; None while it waits."""
    try:
        return int((_folder(state_dir) / f"call-{token}.id").read_text())
    except (OSError, ValueError):
        return None


def is_waiting(state_dir: Path, token: str) -> bool:
    folder = _folder(state_dir)
    return (folder / f"call-{token}.json").exists() or (folder / f"call-{token}.pending").exists()


def enqueue(state_dir: Path, store: Store) -> int:
    """Store the calls waiting in this host's spool, each once; return how many were stored.

    Raises the store's error when the state is still unreachable: the rest
    wait for the next look.
    """
    folder = _folder(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    stored = 0
    for name in names:
        path = folder / name
        if name.startswith("call-") and name.endswith(".id"):
            _forget_old(path)
            continue
        if not name.startswith("call-") or not name.endswith((".json", ".pending")):
            continue
        token = name[len("call-"):name.rindex(".")]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # taken by another enqueuer meanwhile
        if name.endswith(".pending") and not _orphaned(path, data.get("pid")):
            continue  # its process is still storing it
        run_id = store.find_call(token)
        if run_id is None:
            run_id = store.add_run(Run(task=data["task"], trigger=data["trigger"],
                                       status=data["status"], created=data["created"],
                                       call=data["call"], due=data["due"]))
            stored += 1
        put(folder / f"call-{token}.id", str(run_id).encode())
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    return stored


def _orphaned(path: Path, pid: object) -> bool:
    """Whether a call in flight is an enqueuer's: its process gone, or its flight too long."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if age > IN_FLIGHT:
        return True
    if age < SETTLE or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, another user's
    return False


def _forget_old(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > KEEP_IDS:
            path.unlink()
    except OSError:
        pass
