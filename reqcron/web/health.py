"""``{status_path}/health``: is every enabled task on time?  For an uptime monitor.

A task is overdue when its first unclaimed slot is later than its
``grace`` (one minute without one), or when it is starved.  Paused tasks
(``reqcron pause``) and disabled ones are never overdue.  The page reads
the state before the probe's own tick (status.py ticks after), so a gap
shows once and the next probe reads ok.
"""

from __future__ import annotations

from .. import marks
from ..times import iso

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

    from ..engine.docroot import Docroot

#: How late a slot of a task without a grace may be before the site is not healthy.
TOLERANCE = 60.0


def overdue(doc: Docroot, at: float) -> list[dict[str, Any]]:
    """The enabled tasks whose slot is overdue at ``at``: name, slot, seconds late, starved."""
    catalog = doc.catalog()
    states = doc.states()
    pause = doc.paused(at)
    found = []
    for name in sorted(catalog.tasks):
        info, state = catalog.tasks[name], states.get(name)
        if state is None or not state.enabled or state.next_due is None:
            continue
        if pause is not None and not info.even_when_paused:
            continue
        late = at - state.next_due
        starved = marks.starved(doc, name, state, at)
        if late > (info.grace if info.grace is not None else TOLERANCE) or starved:
            found.append({"task": name, "slot": iso(state.next_due, doc.zone),
                          "late": round(late, 1), "starved": starved})
    return found


def answer(doc: Docroot, at: float, named: bool) -> tuple[int, str, dict[str, Any] | None]:
    """(HTTP status, text, JSON for a caller with the token or None) of a probe at ``at``."""
    late = overdue(doc, at)
    code = 503 if late else 200
    text = "ok" if not late else f"{len(late)} task{'s' if len(late) != 1 else ''} overdue"
    return code, text, ({"ok": not late, "overdue": late} if named else None)
