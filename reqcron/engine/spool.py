"""Outcomes waiting for the state: one small private JSON file per attempt, on this host.

When the end of an attempt cannot be written (the database is unreachable,
the SQLite file locked past its busy timeout), it is kept here, under the
host's ``state_dir``, and written by the next process of the site that
reaches the state (outcomes.py).  A file is put in place whole (written
under a temporary name, synced, renamed) and private (0600 in a 0700
folder): outputs may hold secrets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..paths import ensure_private_dir
from ..store.rows import Attempt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

FOLDER = "spool"


class Kept:
    """One spooled outcome: the attempt it ends and the fields that end it."""

    __slots__ = ("path", "attempt", "values")

    def __init__(self, path: Path, attempt: Attempt, values: dict[str, Any]):
        self.path = path
        self.attempt = attempt
        self.values = values


def spool_dir(state_dir: Path) -> Path:
    """Where the host keeps the outcomes of a DOCROOT that wait for its state."""
    return state_dir / FOLDER


def keep(folder: Path, attempt: Attempt, values: dict[str, Any]) -> Path:
    """Keep the end of ``attempt`` in ``folder``, atomically; return the file."""
    ensure_private_dir(folder)
    path = folder / f"run-{attempt.id}-{attempt.attempts}.json"
    put(path, json.dumps({"attempt": attempt.as_dict(), "values": values}).encode())
    return path


def put(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` whole (a temporary file synced, then renamed), private."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def waiting(folder: Path) -> list[Kept]:
    """The outcomes kept in ``folder``, oldest run first (unreadable files are skipped)."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("run-")
                       and n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    kept = []
    for name in names:
        path = folder / name
        try:
            data = json.loads(path.read_text())
            a = data["attempt"]
            attempt = Attempt(int(a["id"]), str(a["status"]), a.get("lock"),
                              int(a.get("attempts") or 0))
            kept.append(Kept(path, attempt, dict(data["values"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed meanwhile by another replayer, or not ours
    return kept


def waiting_ids(folder: Path) -> set[int]:
    """The ids of the runs whose outcome waits in ``folder`` (a look at names only)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    ids = set()
    for name in names:
        if name.startswith("run-") and name.endswith(".json"):
            head = name[4:].split("-", 1)[0]
            if head.isdigit():
                ids.add(int(head))
    return ids


def forget(kept: Kept) -> None:
    """Remove a spooled outcome once written (or found moot)."""
    try:
        os.unlink(kept.path)
    except FileNotFoundError:
        pass
