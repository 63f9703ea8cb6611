"""A deferred call kept back until a transaction commits (Django's ``on_commit``).

Stored at once, so it has its id (``TaskResult.id``) while the transaction
is still open, but parked: due at no time it will reach.  A commit lets it
go, after the response of the request it is made in like any call; a
rollback drops it (``drop``), and a process that dies before either leaves
it parked for good, never run.
"""

from __future__ import annotations

from ..engine.stored_calls import HOLD, Call, new_run
from ..records import Status, now
from ..store.rows import Attempt
from . import serving
from .result import engine_of

#: The due time of a parked call: 9999-12-31 23:59:59 UTC, which no clock reaches.
PARKED = 253402300799.0


def park(call: Call, docroot: str) -> int:
    """Store ``call`` in the state of ``docroot``, parked; return its id."""
    serving.note_use()  # ASGI requests are followed from now on (delay.py)
    return engine_of(docroot).store.add_run(new_run(call, now(), PARKED))


def let_go(run_id: int, docroot: str, at: float | None = None, call: Call | None = None) -> bool:
    """Make parked call ``run_id`` due at ``at`` (now by default), after the response of
    the request this is called in; ``call`` replaces what it runs.  False if not parked."""
    middleware, key, _ = serving.where(docroot)
    engine = engine_of(docroot)
    created = now()
    due = created if at is None else max(at, created)
    held = middleware is not None and due < created + HOLD
    values: dict[str, object] = {"due": due + HOLD if held else due}
    if call is not None:
        values["call"] = call.encode()
    if not engine.store.update_run_if(_parked(run_id), **values):
        return False
    if held:
        assert middleware is not None
        middleware.hold(run_id, engine, key)
    return True


def drop(run_id: int, docroot: str, why: str) -> bool:
    """Record parked call ``run_id`` as never run (skipped, with ``why``)."""
    return engine_of(docroot).store.update_run_if(
        _parked(run_id), status=Status.SKIPPED, end=now(), error=why)


def _parked(run_id: int) -> Attempt:
    """The attempt a parked call is in: queued, never taken."""
    return Attempt(run_id, Status.QUEUED, None, 0)
