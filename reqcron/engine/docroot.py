"""Docroot: the engine behind the middleware, the commands and the status page.

It knows tasks through the catalog kept in the state (catalog.py, sync.py):
when ``__tasks__.py`` or ``reqcron.toml`` changes, one process of the site
reads it in a child and stores the result; every other process picks the
new catalog up by its version.  A poll (``pulse()``) is one small query
whatever the number of tasks.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from ..config import CONFIG_FILE, TASKS_FILE, Settings, load_settings
from ..errors import ConfigError, ScheduleError, StateError, TaskLookupError
from ..loading import catalog as catalogs
from ..loading.import_path import module_files
from ..loading.loader import load_tasks
from ..logonce import LogOnce
from ..paths import check_tasks_safety, docroot_path
from ..records import Claim, LoadError, Run, TaskState, Trigger, now
from ..schedule.zones import local_zone, zone_name, zone_named
from ..store import CLOCK_KEY, SQLiteStore, Store, open_store
from . import catalog_sync as sync

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ..loading.catalog import Catalog, TaskInfo
    from ..schedule.forms import Schedule
    from ..store import Pulse
    from ..store.base import RunStats
    from ..task_base import TaskBase as Task

log = logging.getLogger("reqcron")



class Docroot:
    """One DOCROOT: its settings, its tasks and its shared state."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        # Seconds to wait for a busy database; keep it short on a request
        # path, where skipping and retrying beats waiting.
        busy_timeout: float = 5.0,
        store: Store | None = None,
        # Log the load errors this process finds reading the files (the
        # server's log); commands print them themselves.
        log_load_errors: bool = True,
    ):
        self.path = docroot_path(path)
        # The file's identity before its contents: a change made while it is
        # read is then seen as a change on the next look.
        config_identity = _identity(self.path / CONFIG_FILE)
        self.settings: Settings = load_settings(self.path)
        self._settings_error: LoadError | None = None
        self._busy_timeout = busy_timeout
        self._log_load_errors = log_load_errors
        self._store = store
        self._catalog: Catalog = catalogs.Catalog("UTC")
        self._version = -1
        self._stamps: tuple[object, ...] = (None, config_identity, None)
        self._key = ""
        self._zone_name: str | None = None
        self.zone_warning: str | None = None
        self._schedules: dict[tuple[str, float | None], Schedule] = {}
        self._log_once = LogOnce()

    @property
    def store(self) -> Store:
        """The state store (opened on first use)."""
        if self._store is None:
            self._store = open_store(self.settings, self._busy_timeout)
        return self._store

    @property
    def state_location(self) -> str:
        """Where the state is, for people."""
        return self.store.location

    def state_problems(self) -> list[str]:
        """Why the state cannot be read or written, one sentence each; empty when usable."""
        return self.store.problems()

    def reset_state(self) -> str | None:
        """Set the state aside (kept, renamed) so a fresh one starts; return where it went."""
        return self.store.set_aside()

    def copy_state_to(self, url: str, site: str | None = None) -> tuple[int, int]:
        """Copy this DOCROOT's SQLite state into the PostgreSQL ``url`` as ``site``.

        The source is the SQLite state the DOCROOT uses now, so copy before
        setting ``site`` and ``state`` in reqcron.toml (``site`` there moves a
        SQLite state).  Returns how many tasks and runs were copied; the
        target site must be empty.
        """
        from ..store.postgres import PostgresStore, redact

        site = site or self.settings.site
        if not site:
            raise StateError(redact(url), "name the site it becomes there: --site NAME")
        source = SQLiteStore(self.settings.state_dir / "state.db", self._busy_timeout)
        target = PostgresStore(url, site)
        try:
            dump = source.dump()
            target.restore(dump)
        finally:
            source.close()
            target.close()
        return len(dump.tasks), len(dump.runs)

    # -- the catalog -----------------------------------------------------------

    def pulse(self, at: float | None = None) -> Pulse:
        """Bring this process up to date with the site, cheaply; return the state's pulse.

        Re-reads the tasks file (in a child) if it changed, loads a catalog
        another process stored, and re-positions schedules after the clock
        was set back.
        """
        current = now() if at is None else at
        self.store.verify()
        key = self._files_key()
        pulse = self.store.pulse()
        if pulse.catalog_key != key:
            sync.read_once(self.store, self.path, self.settings.python, self.zone_name(), key,
                           current, self._schedule, self._log_load_errors,
                           self.settings.modules, self.settings.django_settings)
            pulse = self.store.pulse()
        if pulse.catalog_version != self._version:
            self._load_catalog()
        from ..schedule import clock

        if clock.went_back(pulse.clock):
            self._clock_went_back()
            pulse = self.store.pulse()
        return pulse

    def next_check(self) -> float | None:
        """Return the earliest time at which due() could find work, from the state.

        Deferred calls count only while they wait for their time: calls due
        now are being run by task processes, or are started at the next look.
        """
        pulse = self.store.pulse()
        current = now()
        calls = pulse.call_due if pulse.call_due is not None and pulse.call_due > current else None
        return min((t for t in (pulse.earliest, calls) if t is not None), default=None)

    def queue(self) -> dict[str, int]:
        """How many deferred calls wait (for their time, or a process) and how many run."""
        return {"queued": self.store.due_calls(float("inf"), 1_000_000),
                "running": self.store.calls_running()}

    def drainers_wanted(self, at: float | None = None) -> int:
        """How many task processes to start for the deferred calls due now (max_processes)."""
        from .stored_calls import SLOT_LOCK

        current = now() if at is None else at
        most = self.settings.max_processes
        waiting = self.store.due_calls(current, most)  # one small query, as a pulse is
        if not waiting:
            return 0
        started = self.store.held_task_locks([SLOT_LOCK.format(i) for i in range(most)])
        if started:
            # A process between two calls (or lingering after its last) takes the next.
            waiting -= max(0, started - self.store.calls_running())
        return max(0, min(waiting, most - started))

    def catalog(self) -> Catalog:
        """The tasks as data (the last good definitions while the file is broken)."""
        self.pulse()
        return self._catalog

    def _files_key(self) -> str:
        """Identify what the catalog is read from (re-hashed only when a stat changes).

        That is the tasks file, the task modules' files, the zone, the
        ``modules`` and ``django_settings`` settings and whether the files are
        refused, not reqcron.toml as a whole: its host-local settings
        (state_dir, python) differ between the hosts of one site, which must
        agree on one catalog.  reqcron.toml is re-read here when it changes.
        """
        tasks, config = self.path / TASKS_FILE, self.path / CONFIG_FILE
        config_stamp = _identity(config)
        if config_stamp != self._stamps[1]:
            self._reload_settings()
        # Found by walking the import path, never by importing: the web
        # server's processes import no task code.
        modules = module_files(self.path, self.settings.modules)
        stamps = (_identity(tasks), config_stamp, _identity(self.path),
                  *(_identity(m) for m in modules))
        if stamps != self._stamps:
            # Modes count too: a tasks file others can write is refused, and
            # fixing its mode must be read again.
            refusal = check_tasks_safety(self.path) or ""
            imports = "\0".join([self.settings.django_settings or "", *self.settings.modules])
            key = sync.files_key((tasks, *modules),
                                 f"{self.zone_name()}\0{refusal}\0{imports}")
            self._stamps, self._key = stamps, key  # only once the state answered
        return self._key

    def _reload_settings(self) -> None:
        try:
            settings = load_settings(self.path)
            self._settings_error = None
        except ConfigError as exc:  # keep the last good settings
            self._settings_error = LoadError(exc.path, exc.line, exc.problem)
            self._log_once(logging.ERROR, "%s", self._settings_error)
            return
        where = (settings.state, settings.site, settings.state_dir)
        if where != (self.settings.state, self.settings.site, self.settings.state_dir):
            # Another state: open it afresh, with its own zone and catalog.
            if self._store is not None:
                self._store.close()
            self._store, self._zone_name, self._version = None, None, -1
        self.settings = settings

    def _load_catalog(self) -> None:
        row = self.store.catalog()
        self._catalog = (catalogs.Catalog.from_json(row.data) if row.data
                         else catalogs.Catalog(self.zone_name()))
        self._version = row.version

    def zone_name(self) -> str:
        """The zone the DOCROOT's schedules are read in, the same for every trigger.

        ``timezone`` in reqcron.toml, else the local zone of the first
        process that asked, kept in the state: a crontab with TZ=UTC beside
        a server in Europe/Amsterdam must not see another schedule.
        """
        if self.settings.timezone:
            return self.settings.timezone
        if self._zone_name is None:
            here = zone_name(local_zone())
            self._zone_name = self.store.init_meta("zone", here)
            if self._zone_name != here:
                self.zone_warning = (
                    f"this process's local zone is {here}, but the schedules of {self.path} "
                    f"are read in {self._zone_name}, kept in the state since it was created; "
                    "set `timezone` in reqcron.toml to make it explicit"
                )
                self._log_once(logging.WARNING, "%s", self.zone_warning)
        return self._zone_name

    @property
    def zone(self) -> ZoneInfo:
        """The DOCROOT's zone, for showing times."""
        return zone_named(self.zone_name())

    def warnings(self) -> list[str]:
        """Problems that lose nothing yet but should be fixed: zone and user disagreements."""
        from ..paths import owner_warning

        self.zone_name()
        found = [self.zone_warning, owner_warning(self.path)]
        return [w for w in found if w]

    def load_errors(self) -> list[LoadError]:
        """What went wrong reading the DOCROOT's files: file errors and per-task errors."""
        errors = list(self.catalog().errors)
        return [self._settings_error, *errors] if self._settings_error else errors

    def info(self, name: str) -> TaskInfo:
        """Return task ``name`` as data; raises TaskLookupError listing the known ones."""
        self.pulse()
        return self._known(name)

    def _known(self, name: str) -> TaskInfo:
        """``name`` in this process's catalog, without a new look at the state (loops call
        this once per task after one pulse)."""
        if self._version < 0:
            self.pulse()
        tasks = self._catalog.tasks
        if name not in tasks:
            raise TaskLookupError(name, sorted(tasks))
        return tasks[name]

    def tasks(self) -> dict[str, Task]:
        """Import __tasks__.py and ``modules`` in this process and return the tasks
        (Python API only).

        The surfaces never do this: they use ``catalog()``, read in a child.
        """
        return load_tasks(self.path, zone_named(self.zone_name()), modules=self.settings.modules,
                          django_settings=self.settings.django_settings).tasks

    # -- schedules -------------------------------------------------------------

    def _schedule(self, signature: str, anchor: float | None) -> Schedule | None:
        from ..schedule.forms import from_signature

        key = (signature, anchor if signature.startswith("every:") else None)
        if key not in self._schedules:
            schedule = from_signature(signature, _dt(anchor) if anchor is not None else None)
            if schedule is None:
                return None
            self._schedules[key] = schedule
        return self._schedules[key]

    def schedule_of(self, name: str, state: TaskState | None = None) -> Schedule:
        """Return task ``name``'s schedule, with an ``every`` anchored as the state says."""
        info = self._known(name)
        if state is None:
            state = self.store.state(name)
        anchor = (state.anchor or state.first_seen) if state is not None else now()
        schedule = self._schedule(info.signature, anchor)
        if schedule is None:
            raise ScheduleError(name, f"{info.signature!r} cannot be read back")
        return schedule

    def states(self) -> dict[str, TaskState]:
        """Each catalogued task's row in the state."""
        tasks = self.catalog().tasks
        return {n: s for n, s in self.store.states().items() if n in tasks}

    def _clock_went_back(self) -> None:
        """Re-position the slots claimed at a wall time later than now (see clock.py)."""
        from ..schedule import clock

        current = now()  # not a caller's `at`: this is about the real clock
        for name, state in self.store.states().items():
            info = self._catalog.tasks.get(name)
            if info is None or state.next_due is None or state.signature != info.signature:
                continue
            schedule = self._schedule(info.signature, state.anchor or state.first_seen)
            if schedule is None:
                continue
            moved = clock.repositioned(schedule, state.next_due, current)
            if moved is not None:
                self.store.reposition(name, state.next_due, info.signature, moved)
        self.store.set_meta(CLOCK_KEY, repr(clock.offset()))
        log.warning("reqcron: %s: the clock was set back; schedules follow the new time",
                    self.path)

    # -- claims ------------------------------------------------------------------

    def due(self, trigger: Trigger = Trigger.REQUEST, at: float | None = None) -> list[Claim]:
        """Claim every slot and run-now request due now; return the runs to start.

        Of all processes calling this at once, exactly one claims each slot.
        Slots passed while nothing checked are coalesced into one run.  A
        slot past the task's grace, of a disabled task, or of a task that no
        longer loads is recorded and not returned.  One task's failure is
        recorded on that task; the others go on.
        """
        from .claims import claim_request, claim_slot, park

        current = now() if at is None else at
        self.pulse(current)
        claims: list[Claim | None] = []
        failed: list[tuple[int, str]] = []  # slots recorded as failed: the task does not load
        for state in self.store.due_states(current):
            info = self._catalog.tasks.get(state.name)
            if info is None or state.signature != info.signature:
                continue  # removed, or this process's catalog is not the state's
            error = self._why_not(info.name)
            try:
                if state.run_requested is not None and state.run_requested <= current:
                    claims.append(claim_request(self.store, info, state, error, current,
                                                failed))
                if state.next_due is not None and state.next_due <= current:
                    schedule = self.schedule_of(info.name, state)
                    claims.append(claim_slot(self.store, info, state, schedule, error, trigger,
                                             current, failed))
            except StateError:
                raise
            except Exception as exc:  # a bad value of one task
                problem = park(self.store, info, state, current, exc)
                self._log_once(logging.ERROR, "reqcron: task %s of %s: %s", info.name,
                               self.path, problem)
        self._tell(failed)
        return [c for c in claims if c is not None]

    def _why_not(self, name: str) -> str | None:
        """Why ``name``'s due slots are recorded as failed rather than started, or None.

        A reqcron.toml that does not load would stop every task process before
        its run: its slots say so, instead of ending as lost runs.
        """
        if self._settings_error is not None:
            return f"{CONFIG_FILE} does not load: {self._settings_error}"
        error = self._catalog.error_of(name)
        return f"{TASKS_FILE} does not load: {error}" if error else None

    def claim_due(self, name: str, trigger: Trigger = Trigger.CRON) -> Claim | None:
        """Claim ``name``'s slot if one is due now (for a run that starts anyway)."""
        from .claims import claim_slot

        current = now()
        self.pulse(current)
        info = self.info(name)
        state = self.store.state(name)
        if state is None or state.next_due is None or state.next_due > current:
            return None
        return claim_slot(self.store, info, state, self.schedule_of(name, state),
                          self._why_not(name), trigger, current)

    # -- steering ------------------------------------------------------------

    def run_now(self, name: str) -> None:
        """Ask for a run of ``name`` that the next check starts."""
        self.info(name)
        self.store.request_run(name, now())

    def enable(self, name: str) -> None:
        """Turn ``name``'s schedule on, for every trigger."""
        self.info(name)
        self.store.set_enabled(name, True)

    def disable(self, name: str) -> None:
        """Turn ``name``'s schedule off, for every trigger; a running run is asked to stop."""
        self.info(name)
        self.store.set_enabled(name, False)

    def is_enabled(self, name: str) -> bool:
        state = self.store.state(name)
        if state is not None:
            return state.enabled
        return self.info(name).enabled

    # -- history -------------------------------------------------------------

    def history(self, name: str | None = None, limit: int = 50, *,
                before: int | None = None, after: int | None = None) -> list[Run]:
        """Return past runs, newest first (all tasks, or one; a page: see Store.runs)."""
        if (name is not None and name not in self.catalog().tasks
                and not self.store.runs(name, 1)):
            raise TaskLookupError(name, sorted(self._catalog.tasks))
        self.reap()
        return self.store.runs(name, limit, before=before, after=after)

    def recent_runs(self, name: str | None = None, limit: int = 50,
                    statuses: tuple[str, ...] = (), *, before: int | None = None,
                    after: int | None = None) -> list[Run]:
        """Return the latest runs as stored, newest first, without reaping or checks."""
        return self.store.runs(name, limit, statuses, before=before, after=after)

    def get_run(self, run_id: int) -> Run | None:
        return self.store.get_run(run_id)

    def run_stats(self) -> RunStats:
        """The kept history in aggregate: counts by task and status, durations, lateness."""
        return self.store.run_stats()

    def not_started(self, run_id: int, error: str, exit_code: int | None = None) -> bool:
        """Record that a claimed run's process never started it: lost, with why."""
        from .reaping import not_started

        return not_started(self.store, run_id, error, exit_code)

    def reap(self, name: str | None = None) -> int:
        """Record the runs whose process died (see reaper.py); return how many.

        Their notifications go out from a thread of their own: this may run in
        the middleware's worker, which must not wait on a mail server.  Not a
        daemon: a command that found the dead run still sends before it exits.
        """
        from .reaping import reap

        ended = reap(self.store, name)
        self._tell([(run.id, run.task) for run in ended if run.call is None and run.id])
        return len(ended)

    def _tell(self, runs: list[tuple[int, str]]) -> None:
        """Notify about runs (id, task) this process recorded as failed, from a thread of
        their own; nothing is read unless a task has somewhere to notify."""
        tell = [(run_id, info) for run_id, task in runs
                if (info := self._catalog.tasks.get(task))
                and (info.notify or self.settings.notify)]
        if tell:
            import threading

            threading.Thread(target=self._notify, args=(tell,), name="reqcron-notify").start()

    def _notify(self, tell: list[tuple[int, TaskInfo]]) -> None:
        from ..alerts import notify_run

        for run_id, info in tell:
            recorded = self.store.get_run(run_id)  # as recorded now, not as found
            if recorded is not None:
                notify_run(self.settings, self.store, recorded, info.notify)

    def close(self) -> None:
        """Close the state's connection (a later use opens it again)."""
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Docroot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)

