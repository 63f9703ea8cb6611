"""Hot reload through watchdog; the only module that imports it.

One observer per process (each costs an inotify instance, often only 128
per user), watching DOCROOT folders non-recursively.  Editors save in
several ways: in place, or to a temporary file renamed onto the target,
which arrives as a move: both ends of a move are looked at.

Only changes count: watchdog also reports opening a file and closing it
unwritten, so any read of __tasks__.py (a web server's, an editor's, `cat`)
would otherwise wake every process watching it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ..config import CONFIG_FILE, TASKS_FILE

log = logging.getLogger("reqcron")

WATCHED = frozenset({TASKS_FILE, CONFIG_FILE})

# watchdog's event types that mean the file (or its mode, owner or mtime:
# chmod o+w must be refused, `touch` should reload) changed; not "opened"
# or "closed_no_write", which reads cause.
CHANGES = frozenset({"modified", "created", "deleted", "moved", "closed", "attrib"})


class Watcher:
    """Calls ``on_change(docroot_path)`` when a DOCROOT's tasks file or settings change."""

    def __init__(self, on_change: Callable[[str], None]):
        self._on_change = on_change
        self._observer: object | None = None
        self._watched: set[str] = set()

    def watch(self, path: str) -> bool:
        """Start watching the DOCROOT at ``path``; False when no observer can run here."""
        if path in self._watched:
            return True
        try:
            from watchdog import events
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            # Asked of the kernel too: inotify then never even wakes us for a read.
            kinds = ("Modified", "Attrib", "Created", "Deleted", "Moved", "Closed")
            wanted = [getattr(events, f"File{kind}Event", None) for kind in kinds]
            event_filter = [cls for cls in wanted if cls is not None]

            on_change = self._on_change

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
                    if event.event_type not in CHANGES or event.is_directory:
                        return
                    for changed in (event.src_path, getattr(event, "dest_path", "")):
                        if os.path.basename(os.fsdecode(changed or "")) in WATCHED:
                            on_change(path)
                            return

            if self._observer is None:
                observer = Observer()
                observer.daemon = True
                observer.start()
                self._observer = observer
            self._observer.schedule(  # type: ignore[attr-defined]
                Handler(), path, recursive=False, event_filter=event_filter
            )
        except Exception as exc:  # inotify limits, no watchdog: the stat fallback covers it
            log.warning(
                "reqcron: cannot watch %s for changes (%s); checking it once a second "
                "while requests come instead",
                path,
                exc,
            )
            return False
        self._watched.add(path)
        return True

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        self._watched.clear()
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=2)  # type: ignore[attr-defined]
