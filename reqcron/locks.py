"""flock-based locks that the kernel releases when their holder dies.

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


def lock_dir(state_dir: Path) -> Path:
    path = state_dir / "locks"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def take_task_lock(state_dir: Path, task: str) -> int | None:
    """Take ``task``'s overlap lock; return its fd, or None while another run holds it."""
    fd = os.open(lock_dir(state_dir) / f"{task}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def take_run_lock(state_dir: Path) -> tuple[int, str]:
    """Create and hold a fresh run lock; return its fd and path."""
    path = lock_dir(state_dir) / f"run-{os.urandom(8).hex()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, str(path)


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


def release(fd: int, path: str | None = None) -> None:
    """Drop a lock (and remove a run lock's file)."""
    if path is not None:
        release_path(path)
    os.close(fd)


def release_path(path: str) -> None:
    """Remove a dead run's lock file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
