"""The site's pause (`reqcron pause`): one value in the state's meta, seen by every process.

While it holds, every slot and run-now request of a task without
``even_when_paused`` is recorded ``skipped`` ("paused") instead of run, on
every host and for every trigger (the claims ask ``active()``).  A pause
with an end lifts itself at that moment: nothing has to run to end it.
"""

from __future__ import annotations

import json

from ..errors import UsageError
from ..records import Record, now

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..store import Store

#: The meta key of the pause: JSON {"since": ts, "until": ts or null}; "" when not paused.
PAUSE_KEY = "paused"
#: What a slot skipped while paused says.
PAUSED = "paused"


class Pause(Record):
    """A pause of the site: since when, and until when (None: until resumed)."""

    __slots__ = ("since", "until")

    def __init__(self, since: float, until: float | None):
        self.since = since
        self.until = until


def active(store: Store, at: float) -> Pause | None:
    """The pause holding at ``at``, or None."""
    value = store.meta(PAUSE_KEY)
    if not value:
        return None
    try:
        data = json.loads(value)
        found = Pause(float(data["since"]), None if data["until"] is None else float(data["until"]))
    except (ValueError, KeyError, TypeError):  # written by no reqcron: treat as a pause
        return Pause(0.0, None)
    return None if found.until is not None and found.until <= at else found


class Pausable:
    """Docroot's pause, resume and paused (engine/docroot.py mixes this in)."""

    @property
    def store(self) -> Store:
        raise NotImplementedError

    def pause(self, until: float | None = None, *, at: float | None = None) -> Pause:
        """Pause every task of the site (but those with even_when_paused), on every host,
        until ``resume()`` or until ``until`` (epoch seconds); return the pause."""
        current = now() if at is None else at
        if until is not None and until <= current:
            raise UsageError("a pause must end in the future")
        pause = Pause(current, until)
        self.store.set_meta(PAUSE_KEY, json.dumps({"since": pause.since, "until": pause.until}))
        return pause

    def resume(self) -> None:
        """End the site's pause: the next slots run as usual."""
        self.store.set_meta(PAUSE_KEY, "")

    def paused(self, at: float | None = None) -> Pause | None:
        """The site's pause holding now (or at ``at``), or None."""
        return active(self.store, now() if at is None else at)
