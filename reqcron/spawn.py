"""Start task processes detached from the server, and reap them.

Each process is ``python -m reqcron.runtask --run-id ID DOCROOT NAME``: the
same entry point as the ``runtask`` command, started without a shell, in
its own session, with stdin from /dev/null and no inherited descriptors.
Popen with ``start_new_session`` and ``close_fds`` uses vfork (~0.4 ms
whatever the server's size); ``preexec_fn`` or a double fork would force a
real fork and cost tens of milliseconds in a big worker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading

from .docroot import Claim, Docroot
from .store import Status, now

log = logging.getLogger("reqcron")

SPAWN_LOG = "runtask.log"  # what task processes print outside any run, in the state dir


class Spawner:
    """Starts claimed runs as detached processes and keeps their handles until reaped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, docroot: Docroot, claim: Claim) -> bool:
        """Start the process of ``claim``; on failure record it in the history."""
        command = [
            docroot.settings.python,
            "-m",
            "reqcron.runtask",
            "--run-id",
            str(claim.run_id),
            str(docroot.path),
            claim.task,
        ]
        try:
            errors = os.open(
                docroot.settings.state_dir / SPAWN_LOG,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            try:
                child = subprocess.Popen(
                    command,
                    cwd=docroot.path,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(errors)
        except OSError as exc:
            message = f"its process could not be started: {exc}"
            docroot.store.update_run_if(
                claim.run_id,
                Status.PENDING,
                status=Status.FAILED,
                end=now(),
                error=message,
                exit_code=1,
            )
            log.error("reqcron: task %s of %s: %s", claim.task, docroot.path, message)
            return False
        with self._lock:
            self._children.append(child)
        return True

    def reap(self) -> int:
        """Collect the children that have exited; return how many still run."""
        with self._lock:
            self._children = [c for c in self._children if c.poll() is None]
            return len(self._children)

    def forget(self) -> None:
        """Drop the handles inherited over fork(): they are another process's children."""
        self._lock = threading.Lock()
        self._children = []
