"""The catalog kept in the state, in step with the DOCROOT's files, read once per site.

When ``__tasks__.py``, a task module or ``reqcron.toml`` changes, the first process to
notice takes a lease, reads the files in a child (``reader.read``), lays
the answer over the stored catalog (a task that no longer loads keeps its
last good definition) and stores it with the task rows it implies, in one
transaction.  The others wait for that answer rather than act on a catalog
older than the files they can see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..loading import catalog as catalogs
from ..loading import reader
from ..records import TaskState, now
from ..store import REMOVED, Store, TaskSync

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..loading.catalog import Catalog
    from ..schedule.forms import Schedule

    ScheduleOf = Callable[[str, float | None], Schedule | None]

log = logging.getLogger("reqcron")


def files_key(paths: Sequence[Path], context: str) -> str:
    """Identify the contents of the files a catalog is read from, and what else it
    depends on (``context``: the zone it is read in, a refusal of the files)."""
    try:  # the module behind hashlib.blake2b: hashlib itself loads OpenSSL (~4 ms)
        from _blake2 import blake2b
    except ImportError:  # an interpreter without it
        from hashlib import blake2b

    digest = blake2b(catalogs.FORMAT.encode(), digest_size=16)
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing")
        digest.update(b"\0")
    digest.update(context.encode())
    return digest.hexdigest()


def read_once(store: Store, docroot: Path, python: str, zone: str, key: str, current: float,
              schedule: ScheduleOf, log_errors: bool = True, modules: Sequence[str] = (),
              django_settings: str | None = None) -> None:
    """Read the files of ``key`` and store the catalog, unless another process does.

    The load errors found are logged once, by the process that read them
    (``log_errors``: off where the caller reports them itself, as commands do).
    """
    retry = _retry_of(store.catalog().key, key)
    if retry is not None and not _at_once and now() < retry[1]:
        return  # these files' last read failed: not again before its back-off
    lease = reader.READ_TIMEOUT + 5
    deadline = time.monotonic() + lease
    while not store.begin_read(key, now(), now() + lease):  # real time, not a caller's `at`
        # Another process reads the same files: wait until it is done (its lease
        # gone), not for our key to be stored, which another host may overwrite.
        row = store.catalog()
        if row.key == key or row.reading_key != key or time.monotonic() > deadline:
            return
        time.sleep(0.02)
    stored = store.catalog()
    retry = _retry_of(stored.key, key)  # again: another process may have read them meanwhile
    if retry is not None and not _at_once and now() < retry[1] and stored.data is not None:
        assert stored.key is not None  # it held the retry
        store.save_catalog(stored.key, stored.data, [], [], current)  # gives the lease back
        return
    fresh = reader.read(docroot, python, zone, modules=modules,
                          django_settings=django_settings)
    previous = catalogs.Catalog.from_json(stored.data) if stored.data else None
    merged = fresh.merged_over(previous)
    syncs, removed = row_changes(merged, store.states(), current, schedule)
    stored_key = key
    if merged.errors:  # perhaps passing (a dependency down, a slow read): read again later
        attempt = retry[0] + 1 if retry is not None else 0
        stored_key = f"{key}{_RETRY}{attempt}/{now() + RETRY.delay(attempt):.3f}"
    store.save_catalog(stored_key, merged.to_json(), syncs, removed, current)
    known = {str(e) for e in previous.errors} if previous is not None and retry else set()
    for error in merged.errors if log_errors else ():
        if str(error) not in known:  # a retry that fails alike says nothing new
            log.error("reqcron: %s", error)


class Backoff:
    """When a read that found errors is tried again: ``first`` seconds after it,
    doubling each time up to ``most``."""

    def __init__(self, first: float = 5.0, most: float = 300.0):
        self.first, self.most = first, most

    def delay(self, attempt: int) -> float:
        return float(min(self.first * 2 ** min(attempt, 32), self.most))


#: The back-off of failed reads (tests put a shorter one here).
RETRY = Backoff()
_RETRY = "+retry/"  # stored after the files' key: the attempt, and not before when
_at_once = False


def read_failures_again() -> None:
    """Read files whose last read failed at once, whatever their back-off (``reqcron check``)."""
    global _at_once
    _at_once = True


def _retry_of(stored: str | None, key: str) -> tuple[int, float] | None:
    """The attempt and the not-before time of a failed read of ``key``, or None."""
    if not stored or not stored.startswith(key + _RETRY):
        return None
    attempt, _, when = stored[len(key) + len(_RETRY):].partition("/")
    try:
        return int(attempt), float(when)
    except ValueError:
        return None


def row_changes(catalog: Catalog, states: dict[str, TaskState], current: float,
                schedule: ScheduleOf) -> tuple[list[TaskSync], list[str]]:
    """The task rows a new catalog needs: new tasks and changed schedules start at
    their next slot; an ``every`` keeps counting from when it was first seen; tasks
    gone from the file are marked removed (back later, they start afresh)."""
    syncs = []
    for name, info in catalog.tasks.items():
        state = states.get(name)
        if state is not None and state.signature == info.signature:
            continue
        anchor = state.anchor if state is not None and state.anchor else current
        try:
            found = schedule(info.signature, anchor)
            nxt = found.next_run(datetime.fromtimestamp(current, UTC)) if found else None
        except (ArithmeticError, ValueError, TypeError) as exc:  # one task's, never the site's
            _unschedulable(catalog, name, exc)
            continue
        syncs.append(TaskSync(name, info.signature, nxt.timestamp() if nxt else None, anchor,
                              info.enabled))
    removed = [n for n, s in states.items() if n not in catalog.tasks and s.signature != REMOVED]
    return syncs, removed


def _unschedulable(catalog: Catalog, name: str, exc: Exception) -> None:
    """Make a schedule the engine cannot compute that task's load error (it is not synced)."""
    from ..records import LoadError

    problem = f"task {name!r} has a schedule that cannot be computed: {type(exc).__name__}: {exc}"
    info = catalog.tasks[name]
    info.error = problem
    catalog.errors.append(LoadError(info.source or "__tasks__.py", None, problem, name))
