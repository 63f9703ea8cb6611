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


def _folder(state_dir: Path) -> Path:
    return spool_dir(state_dir)


def keep(state_dir: Path, token: str, run: Run) -> None:
    """Keep ``run`` (a queued call whose JSON holds ``token``) until it can be stored."""
    folder = _folder(state_dir)
    ensure_private_dir(folder)
    data = {"task": run.task, "trigger": run.trigger, "status": run.status,
            "created": run.created, "call": run.call, "due": run.due}
    put(folder / f"call-{token}.json", json.dumps(data).encode())


def stored_id(state_dir: Path, token: str) -> int | None:
    """The id call ``token`` got once it was stored; None while it waits."""
    try:
        return int((_folder(state_dir) / f"call-{token}.id").read_text())
    except (OSError, ValueError):
        return None


def is_waiting(state_dir: Path, token: str) -> bool:
    return (_folder(state_dir) / f"call-{token}.json").exists()


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
        if not (name.startswith("call-") and name.endswith(".json")):
            continue
        token = name[len("call-"):-len(".json")]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # taken by another enqueuer meanwhile
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


def _forget_old(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > KEEP_IDS:
            path.unlink()
    except OSError:
        pass
