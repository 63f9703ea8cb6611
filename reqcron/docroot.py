"""Docroot: the engine behind the middleware, the commands and the status page."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from . import locks
from .config import CONFIG_FILE, TASKS_FILE, Settings, load_settings
from .errors import ConfigError, DocrootError, StateError, TaskLookupError
from .loader import Loaded, LoadError, file_stamp, load_tasks
from .records import Record
from .schedule import Every, Schedule, from_signature
from .store import Run, SQLiteStore, Status, Store, TaskState, Trigger, now
from .task import Task

log = logging.getLogger("reqcron")

#: The signature of a task that is no longer in __tasks__.py.
REMOVED = "removed"

#: A pending run whose process has not started after this long is lost.
PENDING_TIMEOUT = 300.0


class Claim(Record):
    """A run that due() claimed: its process must now be started."""

    __slots__ = ("run_id", "task", "trigger", "slot")

    def __init__(self, run_id: int, task: str, trigger: Trigger, slot: float | None):
        self.run_id = run_id
        self.task = task
        self.trigger = trigger
        self.slot = slot


class Docroot:
    """One DOCROOT: its settings, its tasks and its shared state."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, store: Store | None = None
    ):
        # busy_timeout: seconds to wait for the database; keep it short on a
        # request path, where skipping and retrying beats waiting.
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DocrootError(str(path))
        self.path = root.resolve()
        self.settings: Settings = load_settings(self.path)
        self.store: Store = store or SQLiteStore(self.settings.state_dir / "state.db", busy_timeout)
        self._tasks: dict[str, Task] = {}
        self._errors: list[LoadError] = []
        self._loaded = False
        self._synced: set[str] = set()
        self._file_ok = True
        self._forget_missing = False
        self._stamps: tuple[object, object] | None = None

    # -- loading -----------------------------------------------------------

    def load(self, only: str | None = None, compile_schedules: bool = True) -> Loaded:
        """(Re)load reqcron.toml and __tasks__.py; a file that fails keeps the last good tasks."""
        self._stamps = self.stamps()
        errors: list[LoadError] = []
        try:
            self.settings = load_settings(self.path)
        except ConfigError as exc:
            errors.append(LoadError(exc.path, exc.line, exc.problem))
        loaded = load_tasks(self.path, self._zone(), only=only, compile_schedules=compile_schedules)
        self._file_ok = loaded.file_ok
        if loaded.file_ok:
            self._tasks = loaded.tasks
            self._synced.clear()
            # Tasks no longer in the file are marked, so that if they come
            # back they start at their next slot, and are not claimed as
            # stored schedules while the file is broken.
            self._forget_missing = only is None
            if self._forget_missing:
                try:
                    self._mark_removed(self.store.states(), now())
                except StateError:
                    pass  # states() tries again; loading must not need the state
        self._errors = errors + loaded.errors
        self._loaded = True
        return loaded

    def reload_if_changed(self) -> bool:
        """Reload when __tasks__.py or reqcron.toml changed on disk; True if it did."""
        if self._loaded and self.stamps() == self._stamps:
            return False
        self.load()
        for error in self._errors:
            log.error("%s", error)
        return True

    def stamps(self) -> tuple[object, object]:
        """Identify the current versions of the DOCROOT's two files."""
        return (file_stamp(self.path / TASKS_FILE), file_stamp(self.path / CONFIG_FILE))

    def _zone(self) -> tzinfo | None:
        """The DOCROOT's zone if set; None reads as the system's, resolved only when needed."""
        return self.settings.zone if self.settings.timezone else None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def tasks(self) -> dict[str, Task]:
        """Return the registered tasks by name (the last good ones if the file is broken)."""
        self._ensure_loaded()
        return dict(self._tasks)

    def task(self, name: str) -> Task:
        """Return the task ``name``; raises TaskLookupError listing the known ones."""
        tasks = self.tasks()
        if name not in tasks:
            raise TaskLookupError(name, sorted(tasks))
        return tasks[name]

    def load_errors(self) -> list[LoadError]:
        """Return what went wrong in the last load: file errors and per-task errors."""
        self._ensure_loaded()
        return list(self._errors)

    # -- schedule state ----------------------------------------------------

    def schedule_of(self, task: Task, state: TaskState | None = None) -> Schedule:
        """Return the task's schedule, with ``every`` anchored as the state says."""
        schedule = task.compiled_schedule(self._zone())
        if isinstance(schedule, Every) and schedule.anchor is None and state is not None:
            anchor = state.anchor if state.anchor is not None else state.first_seen
            schedule = schedule.with_anchor(_dt(anchor))
        return schedule

    def states(self, at: float | None = None, only: str | None = None) -> dict[str, TaskState]:
        """Return each registered task's state, creating or re-positioning rows as needed."""
        self._ensure_loaded()
        current = now() if at is None else at
        states = self.store.states()
        if self._forget_missing and only is None:
            self._mark_removed(states, current)
        for name, task in self._tasks.items():
            if only is not None and name != only:
                continue
            state = states.get(name)
            if name in self._synced and state is not None:
                continue
            schedule = task.compiled_schedule(self._zone())
            if state is None or state.signature != schedule.signature:
                # First seen, or its schedule changed: start at its next slot.
                # An `every` keeps counting from when the task was first seen.
                anchor = state.anchor if state is not None and state.anchor else current
                if isinstance(schedule, Every) and schedule.anchor is None:
                    schedule = schedule.with_anchor(_dt(anchor))
                nxt = schedule.next_run(_dt(current))
                state = self.store.sync_task(
                    name, schedule.signature, _ts(nxt), anchor, type(task).enabled, current
                )
                states[name] = state
            self._synced.add(name)
        return {
            name: states[name]
            for name in self._tasks
            if name in states and (only is None or name == only)
        }

    def _mark_removed(self, states: dict[str, TaskState], current: float) -> None:
        self._forget_missing = False
        for name, stored in states.items():
            if name not in self._tasks and stored.signature != REMOVED:
                self.store.sync_task(name, REMOVED, None, None, True, current)

    def next_check(self, at: float | None = None) -> float | None:
        """Return the earliest time at which due() could find work, from the state."""
        times = []
        for state in self.states(at).values():
            if state.run_requested is not None:
                times.append(state.run_requested)
            if state.next_due is not None:
                times.append(state.next_due)
        return min(times, default=None)

    def due(self, trigger: Trigger = Trigger.REQUEST, at: float | None = None) -> list[Claim]:
        """Claim every slot and run-now request due now; return the runs to start.

        Of all processes calling this at once, exactly one claims each slot.
        Slots passed while nothing checked are coalesced into one run.  A
        slot past the task's grace, or of a disabled task, is recorded and
        not returned.
        """
        current = now() if at is None else at
        claims: list[Claim] = []
        for name, state in self.states(current).items():
            task = self._tasks[name]
            if state.run_requested is not None and state.run_requested <= current:
                run = Run(
                    task=name, trigger=Trigger.RUN_NOW, status=Status.PENDING, created=current
                )
                run_id = self.store.claim_request(name, state.run_requested, run)
                if run_id is not None:
                    claims.append(Claim(run_id, name, Trigger.RUN_NOW, None))
            if state.next_due is None or state.next_due > current:
                continue
            claim = self._claim_task_slot(task, state, trigger, current)
            if claim is not None:
                claims.append(claim)
        if not self._file_ok:
            claims.extend(self._claim_unloaded(trigger, current))
        return claims

    def _claim_unloaded(self, trigger: Trigger, current: float) -> list[Claim]:
        """Claim due slots of stored tasks this process could not load.

        The file is broken and this process never saw it whole: the slots
        are claimed all the same, and the task process (which runs the code
        on disk) records them as failed with the load error.
        """
        claims = []
        for name, state in self.store.states().items():
            if name in self._tasks or state.next_due is None or state.next_due > current:
                continue
            anchor = state.anchor if state.anchor is not None else state.first_seen
            schedule = from_signature(state.signature, _dt(anchor))
            if schedule is not None:
                claim = self._claim_slot(name, schedule, None, state, trigger, current)
                if claim is not None:
                    claims.append(claim)
        return claims

    def claim_due(self, name: str, trigger: Trigger = Trigger.CRON) -> Claim | None:
        """Claim ``name``'s slot if one is due now (for a run that starts anyway)."""
        current = now()
        state = self.states(current, only=name).get(name)
        if state is None or state.next_due is None or state.next_due > current:
            return None
        return self._claim_task_slot(self.task(name), state, trigger, current)

    def _claim_task_slot(self, task: Task, state: TaskState, trigger: Trigger,
                         current: float) -> Claim | None:
        schedule = self.schedule_of(task, state)
        return self._claim_slot(task.name, schedule, task.seconds("grace"), state, trigger,
                                current)

    def _claim_slot(self, name: str, schedule: Schedule, grace: float | None, state: TaskState,
                    trigger: Trigger, current: float) -> Claim | None:
        assert state.next_due is not None
        slot = _ts(schedule.latest_slot(_dt(state.next_due), _dt(current)))
        assert slot is not None
        lateness = current - slot
        run = Run(
            task=name,
            trigger=trigger,
            status=Status.PENDING,
            created=current,
            slot=slot,
            lateness=lateness,
        )
        if not state.enabled:
            run.status, run.error, run.end = Status.SKIPPED, "disabled", current
        elif grace is not None and lateness > grace:
            run.status, run.end = Status.MISSED, current
            run.error = f"found {lateness:.0f} s late, past its grace of {grace:g} s"
        new_next = _ts(schedule.next_run(_dt(current)))
        run_id = self.store.claim_slot(
            name, state.next_due, new_next, slot, run, merge=run.status != Status.PENDING
        )
        if run_id is None or run.status != Status.PENDING:
            return None
        return Claim(run_id, name, trigger, slot)

    # -- steering ------------------------------------------------------------

    def run_now(self, name: str) -> None:
        """Ask for a run of ``name`` that the next check starts."""
        self.task(name)
        self.states()
        self.store.request_run(name, now())

    def enable(self, name: str) -> None:
        """Turn ``name``'s schedule on, for every trigger."""
        self._set_enabled(name, True)

    def disable(self, name: str) -> None:
        """Turn ``name``'s schedule off, for every trigger; a running run is asked to stop."""
        self._set_enabled(name, False)

    def _set_enabled(self, name: str, enabled: bool) -> None:
        self.task(name)
        self.states()
        self.store.set_enabled(name, enabled)

    def is_enabled(self, name: str) -> bool:
        state = self.store.states().get(name) or self.states(only=name).get(name)
        return state.enabled if state is not None else type(self.task(name)).enabled

    # -- history -------------------------------------------------------------

    def history(self, name: str | None = None, limit: int = 50) -> list[Run]:
        """Return past runs, newest first (all tasks, or one)."""
        if name is not None and name not in self.tasks() and not self.store.runs(name, 1):
            raise TaskLookupError(name, sorted(self.tasks()))
        self.reap()
        return self.store.runs(name, limit)

    def get_run(self, run_id: int) -> Run | None:
        return self.store.get_run(run_id)

    def reap(self, name: str | None = None) -> int:
        """Record as failed the runs whose process died; return how many."""
        count = 0
        current = now()
        for run in self.store.runs(name, 1000, (Status.PENDING, Status.RUNNING)):
            assert run.id is not None
            if run.status == Status.RUNNING and not (run.lock and locks.holder_alive(run.lock)):
                error = "its process died without recording an end (killed?)"
                if self.store.update_run_if(
                    run.id,
                    Status.RUNNING,
                    status=Status.FAILED,
                    end=current,
                    error=error,
                    exit_code=1,
                ):
                    count += 1
                    if run.lock:
                        locks.release_path(run.lock)
            elif run.status == Status.PENDING and current - run.created > PENDING_TIMEOUT:
                error = f"its process did not start within {PENDING_TIMEOUT:.0f} s"
                if self.store.update_run_if(
                    run.id, Status.PENDING, status=Status.LOST, end=current, error=error
                ):
                    count += 1
        return count

    def run(self, name: str, *, run_id: int | None = None, echo: bool = True,
            if_due: bool = False) -> int:
        """Run ``name`` in the foreground as ``runtask`` does; return its exit code."""
        from .runner import run_task

        return run_task(self, name, run_id=run_id, echo=echo, if_due=if_due)

    def close(self) -> None:
        self.store.close()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None
