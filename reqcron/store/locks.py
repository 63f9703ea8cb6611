"""flock-based locks that the kernel releases when their holder dies (SQLite stores).

Two kinds, both files under the state directory:

- a task lock (``<task>.lock``), held exclusively by a run of a task with
  ``overlap = False``: a second run finds it taken and does not start;
- a run lock (``run-<token>.lock``), held by every run while it lives: a
  run row whose lock is free belongs to a process that died.

flock, not lockf: POSIX locks vanish when any other fd on the file closes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..paths import ensure_private_dir


class FileLock:
    """A held flock; ``token`` is what a run row keeps to find it again."""

    def __init__(self, fd: int, token: str, remove: bool):
        self.fd = fd
        self.token = token
        self.fds: tuple[int, ...] = (fd,)  # a task's child closes these: it never extends it
        self._remove = remove

    def release(self) -> None:
        if self._remove:
            forget(self.token)
        os.close(self.fd)


def lock_dir(state_dir: Path) -> Path:
    path = state_dir / "locks"
    ensure_private_dir(path)
    return path


def take_task_lock(state_dir: Path, task: str) -> FileLock | None:
    """Take ``task``'s overlap lock; None while another run holds it."""
    path = lock_dir(state_dir) / f"{task}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return FileLock(fd, str(path), remove=False)


def take_run_lock(state_dir: Path) -> FileLock:
    """Create and hold a fresh run lock."""
    path = lock_dir(state_dir) / f"run-{os.urandom(8).hex()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return FileLock(fd, str(path), remove=True)


def holder_alive(path: str) -> bool:
    """Tell whether the run lock at ``path`` is still held by a live process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def forget(path: str) -> None:
    """Remove a dead run's lock file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
