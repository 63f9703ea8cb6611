"""The end of an attempt, written so that it is never lost and never lands on another attempt.

``record_end`` writes it as one compare-and-swap on the attempt (store
``update_run_if``).  A quick failure (a dropped session) is retried at once
on a new connection; a slow one (a lock held past the timeout, a database
that does not answer) or a second failure keeps the outcome in the host's
spool (spool.py), which ``replay`` writes when the state is back.  A write
refused because a reaper took the attempt for dead (its lock looked free
while the session was lost) corrects that verdict: the attempt's own end
is the truth, and whoever wrote it notifies again (alerts.event_for: a
failure told that was not one is "corrected").  A write refused because the row moved on to another
attempt changes nothing.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from ..errors import StateError
from ..records import Status
from ..store.rows import Attempt
from . import spool

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from ..store import Store

log = logging.getLogger("reqcron")

#: What a reaper records on an attempt whose process it found dead.
DIED = "its process died without recording an end (killed?)"
#: A failed write that took less than this was a dropped session: retried at once.
QUICK = 1.0
#: The statuses a reaper leaves on an attempt it took for dead.
_REAPED = frozenset({Status.FAILED, Status.LOST, Status.QUEUED})


class Written(StrEnum):
    """What became of an outcome."""

    RECORDED = "recorded"  # in the state (now, or found there already)
    CORRECTED = "corrected"  # recorded over a reaper's "died": a failure told may be undone
    SPOOLED = "spooled"  # kept on this host until the state is back
    REFUSED = "refused"  # the row is another attempt now (or gone): nothing written


def record_end(store: Store, attempt: Attempt, values: dict[str, Any],
               folder: Path | None) -> Written:
    """Write the end of ``attempt``; keep it in ``folder`` while the state is unreachable."""
    problem: StateError | None = None
    for _ in range(2):
        started = time.monotonic()
        try:
            return _write(store, attempt, values)
        except StateError as exc:
            problem = exc
            if time.monotonic() - started > QUICK:
                break  # waiting again as long helps no one: the spool does
    if folder is None:
        assert problem is not None
        raise problem
    path = spool.keep(folder, attempt, values)
    log.warning("the state cannot be written (%s): the outcome of run %s is kept in %s and "
                "recorded when the state is back", problem, attempt.id, path)
    return Written.SPOOLED


def _write(store: Store, attempt: Attempt, values: dict[str, Any]) -> Written:
    """One conditional write of the end, or the verdict on why it was refused."""
    if store.update_run_if(attempt, **values):
        return Written.RECORDED
    row = store.get_run(attempt.id)
    if row is None or row.lock != attempt.lock or row.attempts != attempt.attempts:
        return Written.REFUSED  # pruned, or another attempt took the row
    if all(getattr(row, k) == v for k, v in values.items()
           if k in ("status", "end", "due")):
        return Written.RECORDED  # an earlier try got through before its answer was lost
    if row.status in _REAPED and row.error == DIED:
        # A reaper took this live attempt for dead: its own end is the truth.
        if store.update_run_if(Attempt.of(row), **{"error": None, **values}):
            return Written.CORRECTED
    return Written.REFUSED


def replay(store: Store, folder: Path, corrected: list[int] | None = None) -> int:
    """Write the outcomes waiting in ``folder``; return how many were recorded.

    Idempotent and safe beside another replayer: each write is conditional
    on its attempt.  Stops at the first StateError (the state is still
    away) and keeps what is left.  The ids of the runs whose reaped verdict
    was corrected go into ``corrected`` (their notification is to be redone).
    """
    recorded = 0
    for kept in spool.waiting(folder):
        try:
            written = _write(store, kept.attempt, kept.values)
        except StateError:
            break
        if written == Written.REFUSED:
            log.warning("the spooled outcome of run %s was not recorded: the run is another "
                        "attempt now, or gone", kept.attempt.id)
        else:
            recorded += 1
            if written == Written.CORRECTED and corrected is not None:
                corrected.append(kept.attempt.id)
        spool.forget(kept)
    return recorded
