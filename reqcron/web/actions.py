"""What the status page's buttons do, for both pages (web/status.py and Django's view)."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..engine.docroot import Docroot

#: A task's buttons (the form's ``task`` names it), then the whole site's (on every host).
TASK_ACTIONS = ("run", "enable", "disable")
SITE_ACTIONS = ("pause", "resume")
ACTIONS = TASK_ACTIONS + SITE_ACTIONS


def perform(doc: Docroot, action: str, task: str) -> None:
    """Do ``action`` (one of ACTIONS); TaskLookupError for a task there is not."""
    if action == "pause":
        doc.pause()  # until resumed: a pause with an end is `reqcron pause --until`
    elif action == "resume":
        doc.resume()
    elif action in TASK_ACTIONS:
        {"run": doc.run_now, "enable": doc.enable, "disable": doc.disable}[action](task)
    else:
        raise ValueError(f"Unknown action {action!r}.")
