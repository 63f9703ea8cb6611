"""Start task processes detached from the server, and reap them.

Each process is ``python -P -m reqcron.runtask --run-id ID DOCROOT NAME``:
the same entry point as the ``runtask`` command, started without a shell,
in its own session, with stdin from /dev/null and no inherited descriptors.
``-P``: the DOCROOT is its working directory, and a DOCROOT/json.py must not
shadow the standard library.  Popen with ``start_new_session`` and
``close_fds`` uses vfork (~0.4 ms whatever the server's size); ``preexec_fn``
or a double fork would force a real fork and cost tens of milliseconds in a
big worker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading

from ..engine.docroot import Docroot
from ..logonce import LogOnce
from ..paths import ensure_private_dir
from ..records import Claim

SPAWN_LOG = "runtask.log"  # what task processes print outside any run, in the state dir


class Spawner:
    """Starts claimed runs as detached processes and keeps their handles until reaped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A drainer has no run of its own (None): the calls it takes record themselves.
        self._children: list[tuple[subprocess.Popen[bytes], Docroot, int | None]] = []
        self._log_once = LogOnce()

    def start(self, docroot: Docroot, claim: Claim) -> bool:
        """Start the process of ``claim``; on failure record it in the history."""
        return self._start(docroot, ["--run-id", str(claim.run_id), str(docroot.path),
                                     claim.task], claim.run_id)

    def start_drainer(self, docroot: Docroot) -> bool:
        """Start a process that runs the DOCROOT's queued deferred calls (drain.py)."""
        return self._start(docroot, ["--calls", str(docroot.path)], None)

    def _start(self, docroot: Docroot, args: list[str], run_id: int | None) -> bool:
        command = [docroot.settings.python, "-P", "-m", "reqcron.runtask", *args]
        try:
            ensure_private_dir(docroot.settings.state_dir)  # a shared state makes none here
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
            if run_id is not None:
                docroot.not_started(run_id, f"its process could not be started: "
                                            f"{exc.strerror or exc}")
            self._log_once(logging.ERROR, "reqcron: %s: task processes cannot be started: %s "
                           "(runs are recorded as lost)", docroot.path, exc)
            return False
        with self._lock:
            self._children.append((child, docroot, run_id))
        return True

    def reap(self) -> int:
        """Collect the children that have exited; return how many still run.

        A child that exited while its run is still pending never started it
        (a bad interpreter, an unusable state): the run is recorded as lost now,
        not after the pending timeout.
        """
        with self._lock:
            running: list[tuple[subprocess.Popen[bytes], Docroot, int | None]] = []
            ended: list[tuple[subprocess.Popen[bytes], Docroot, int | None]] = []
            for entry in self._children:
                (running if entry[0].poll() is None else ended).append(entry)
            self._children = running
        for child, docroot, run_id in ended:
            if child.returncode != 0 and run_id is not None:
                try:
                    log_file = docroot.settings.state_dir / SPAWN_LOG
                    docroot.not_started(run_id, f"its process exited with code "
                                                f"{child.returncode} before starting the run "
                                                f"(its message is in {log_file})",
                                        exit_code=child.returncode)
                except Exception as exc:  # the state may be what failed
                    self._log_once(logging.ERROR, "reqcron: %s: %s", docroot.path, exc)
        return len(running)
