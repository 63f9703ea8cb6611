"""What the status page's buttons do, for both pages (web/status.py and Django's view)."""

from __future__ import annotations

from ..errors import UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..engine.docroot import Docroot

#: A task's buttons (the form's ``task`` names it), a deferred call's (``call``: its id),
#: then the whole site's (on every host).
TASK_ACTIONS = ("run", "enable", "disable")
CALL_ACTIONS = ("cancel", "retry")
SITE_ACTIONS = ("pause", "resume")
ACTIONS = TASK_ACTIONS + CALL_ACTIONS + SITE_ACTIONS


def perform(doc: Docroot, action: str, task: str, call: str = "") -> None:
    """Do ``action`` (one of ACTIONS); TaskLookupError for a task there is not, UsageError
    for a call that is not there or not in a state for it."""
    if action in CALL_ACTIONS:
        if not call.isdigit():
            raise UsageError(f"no deferred call with id {call!r}")
        (doc.cancel_call if action == "cancel" else doc.retry_call)(int(call))
    elif action == "pause":
        doc.pause()  # until resumed: a pause with an end is `reqcron pause --until`
    elif action == "resume":
        doc.resume()
    elif action in TASK_ACTIONS:
        {"run": doc.run_now, "enable": doc.enable, "disable": doc.disable}[action](task)
    else:
        raise ValueError(f"Unknown action {action!r}.")
