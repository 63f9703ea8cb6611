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
import time

from ..engine.docroot import Docroot
from ..logonce import LogOnce
from ..paths import ensure_private_dir
from ..records import Claim

SPAWN_LOG = "runtask.log"  # what task processes print outside any run, in the state dir
#: Seconds no process for deferred calls is started after one failed (a state that task
#: processes cannot reach, a database out of connections), doubling up to the last.
DRAINER_PAUSE = (1.0, 60.0)


class Spawner:
    """Starts claimed runs as detached processes and keeps their handles until reaped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A drainer has no run of its own (None): the calls it takes record themselves.
        self._children: list[tuple[subprocess.Popen[bytes], Docroot, int | None]] = []
        self._log_once = LogOnce()
        # Per DOCROOT: (monotonic time until which no drainer starts, the last pause).
        self._paused: dict[str, tuple[float, float]] = {}

    def start(self, docroot: Docroot, claim: Claim) -> bool:
        """Start the process of ``claim``; on failure record it in the history."""
        return self._start(docroot, ["--run-id", str(claim.run_id), str(docroot.path),
                                     claim.task], claim.run_id)

    def start_drainer(self, docroot: Docroot) -> bool:
        """Start a process that runs the DOCROOT's queued deferred calls (drain.py).

        Not while the last one failed, for a pause that doubles with each failure:
        calls wait in the queue rather than a storm of processes that cannot work.
        After the pause one process tries alone; the others follow once one ends well.
        """
        key = str(docroot.path)
        if key in self._paused:
            until, _ = self._paused[key]
            if time.monotonic() < until or self.drainers(docroot):
                return False
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

    def leave_running(self) -> None:
        """Let go of the processes still running (a middleware closing): they are detached
        and finish on their own; a daemon thread each reaps it when it ends, so no zombie
        stays behind, and no handle is dropped while its process runs (a ResourceWarning)."""
        with self._lock:
            children, self._children = self._children, []
        for child, _, _ in children:
            threading.Thread(target=child.wait, name="reqcron-reap", daemon=True).start()

    def drainers(self, docroot: Docroot) -> int:
        """How many processes for ``docroot``'s calls this spawner started that have not
        been reaped (some may still be starting, with no slot taken yet; one that ended
        counts until reap() has seen how, and paused the next ones if it failed)."""
        with self._lock:
            return sum(1 for _, doc, run_id in self._children
                       if run_id is None and doc.path == docroot.path)

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
            if run_id is None:
                self._drainer_ended(docroot, child.returncode)
            elif child.returncode != 0:
                try:
                    log_file = docroot.settings.state_dir / SPAWN_LOG
                    docroot.not_started(run_id, f"its process exited with code "
                                                f"{child.returncode} before starting the run "
                                                f"(its message is in {log_file})",
                                        exit_code=child.returncode)
                except Exception as exc:  # the state may be what failed
                    self._log_once(logging.ERROR, "reqcron: %s: %s", docroot.path, exc)
        return len(running)

    def _drainer_ended(self, docroot: Docroot, code: int) -> None:
        key = str(docroot.path)
        if code == 0:
            self._paused.pop(key, None)
            return
        first, most = DRAINER_PAUSE
        until, last = self._paused.get(key, (0.0, 0.0))
        if time.monotonic() < until:
            return  # started before the pause, failed of the same cause: no longer pause
        pause = min(most, max(first, last * 2))
        self._paused[key] = (time.monotonic() + pause, pause)
        self._log_once(logging.ERROR, "reqcron: %s: a process for deferred calls exited with "
                       "code %s (its message is in %s); the next waits %g s or more", docroot.path,
                       code, docroot.settings.state_dir / SPAWN_LOG, pause, key=f"drainer:{key}")
