"""Read a DOCROOT's catalog in a child process: time-limited, capped, and nothing left behind.

The web server's processes never import ``__tasks__.py``: a file that
exits, loops, forks or floods at import must not harm them.  The child
(``python -P -m reqcron.loading.child DOCROOT ZONE``, child.py) imports it
and prints the catalog as JSON; this side gives it a time limit, reads a
capped answer and kills whatever it left behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import TASKS_FILE
from ..records import LoadError
from .catalog import Catalog


def _read_timeout(default: float = 10.0) -> float:
    """The read time limit: REQCRON_READ_TIMEOUT seconds (0.1 to 3600) if set, else 10."""
    try:
        value = float(os.environ.get("REQCRON_READ_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0.1 <= value <= 3600 else default  # also refuses nan and inf


#: Seconds a read of __tasks__.py may take before it is stopped (REQCRON_READ_TIMEOUT).
READ_TIMEOUT = _read_timeout()
#: Bytes of catalog a read may answer with (10,000 tasks take ~3 MB).
READ_LIMIT = 64 * 1024 * 1024
def read(docroot: Path, python: str, zone_name: str, timeout: float = READ_TIMEOUT,
         modules: Sequence[str] = (), django_settings: str | None = None) -> Catalog:
    """Read the catalog of ``docroot`` in a child process (the parent's half); never raises.

    ``modules`` and ``django_settings`` come from the parent's settings (the
    last good ones), so a broken reqcron.toml does not break the tasks.
    """
    import select
    import signal
    import subprocess
    import time

    where = str(docroot / TASKS_FILE)

    def failure(message: str) -> Catalog:
        return Catalog.failed(zone_name, LoadError(where, None, message))

    command = [python, "-P", "-m", "reqcron.loading.child", str(docroot), zone_name,
               *(["--django", django_settings] if django_settings else []), *modules]
    try:
        child = subprocess.Popen(
            command, cwd=docroot, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        return failure(f"cannot start {python} to read it: {exc}")
    assert child.stdout is not None
    fd = child.stdout.fileno()
    answer = bytearray()
    deadline = time.monotonic() + timeout
    timed_out = too_big = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            exited = child.poll() is not None
            # Once the child is gone, stop at the first pause: a copy of it
            # forked at import may hold the pipe open for good.
            if not select.select([fd], [], [], 0.05 if exited else min(left, 0.5))[0]:
                if exited:
                    break
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            answer += chunk
            if len(answer) > READ_LIMIT:
                too_big = True
                break
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # it, and whatever it left behind
        except (ProcessLookupError, PermissionError):
            pass
        child.stdout.close()
        code = child.wait()
    if timed_out:
        return failure(f"reading it took longer than {timeout:g} s (an endless loop at "
                       "import?); it was stopped")
    if too_big:
        return failure(f"reading it answered more than {READ_LIMIT} bytes")
    try:
        return Catalog.from_json(answer.decode("utf-8"))
    except (ValueError, KeyError, TypeError):
        how = (f"died of {signal.Signals(-code).name}" if code < 0
               else f"exited with code {code}")
        return failure(f"reading it failed: its process {how} before it finished "
                       "(os._exit, a crash or a signal at import?)")
