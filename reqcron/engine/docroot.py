"""Docroot: the engine behind the middleware, the commands and the status page.

It knows tasks through the catalog kept in the state (catalog_sync.py):
when ``__tasks__.py`` or ``reqcron.toml`` changes, one process of the site
reads it in a child and stores the result; every other process picks the
new catalog up by its version.  A poll (``pulse()``) is one small query
whatever the number of tasks.
"""

from __future__ import annotations

import logging
import os

from ..config import CONFIG_FILE, TASKS_FILE, Settings
from ..errors import ScheduleError, StateError, TaskLookupError
from ..loading import catalog as catalogs
from ..loading.loader import load_tasks
from ..logonce import LogOnce
from ..paths import docroot_path
from ..records import Claim, LoadError, Run, TaskState, Trigger, now
from ..schedule.zones import local_zone, same_zone, zone_name, zone_named
from ..store import Store, open_store
from . import call_queue, call_spool, site_owner
from . import catalog_sync as sync
from .call_admin import CallAdmin
from .pause import Pausable, active
from .positions import Schedules
from .site_files import SiteFiles

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ..loading.catalog import Catalog, TaskInfo
    from ..schedule.forms import Schedule
    from ..store import Pulse
    from ..store.base import RunStats
    from ..task_base import TaskBase as Task

log = logging.getLogger("reqcron")


class Docroot(Pausable, CallAdmin):
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
        self._log_once = LogOnce()
        self._files = SiteFiles(self.path, self._log_once, self._state_moved)
        self._busy_timeout = busy_timeout
        self._log_load_errors = log_load_errors
        self._store = store
        self._catalog: Catalog = catalogs.Catalog("UTC")
        self._version = -1
        self._zone_name: str | None = None
        self.zone_warning: str | None = None
        self._schedules = Schedules()

    @property
    def settings(self) -> Settings:
        """reqcron.toml as last read well."""
        return self._files.settings

    def _state_moved(self) -> None:
        """reqcron.toml names another state: open it afresh, with its own zone and catalog."""
        if self._store is not None:
            self._store.close()
        self._store, self._zone_name, self._version = None, None, -1

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
        """Copy this DOCROOT's SQLite state into PostgreSQL (see engine/state_copy.py)."""
        from .state_copy import copy_state

        return copy_state(self.settings, url, site, self._busy_timeout)

    # -- the catalog -----------------------------------------------------------

    def pulse(self, at: float | None = None) -> Pulse:
        """Bring this process up to date with the site, cheaply; return the state's pulse.

        Re-reads the tasks file (in a child) if it changed, loads a catalog
        another process stored, and re-positions schedules after the clock
        was set back.
        """
        current = now() if at is None else at
        self.store.verify()
        key = self._files.key(self.zone_name)
        pulse = self.store.pulse()
        call_spool.enqueue(self.settings.state_dir, self.store)  # a look at a folder, mostly
        if pulse.catalog_key != key:
            site_owner.claim(self.store, self.path, self.settings)
            sync.read_once(self.store, self.path, self.settings.python, self.zone_name(), key,
                           current, self._schedules.get, self._log_load_errors,
                           self.settings.modules, self.settings.django_settings)
            pulse = self.store.pulse()
        if pulse.catalog_version != self._version:
            self._load_catalog()
        from ..schedule import clock  # not on a task process's way to run()

        if clock.went_back(pulse.clock):
            from .positions import follow_clock_set_back

            follow_clock_set_back(self.store, self._catalog, self._schedules, self.path)
            pulse = self.store.pulse()
        return pulse

    def next_check(self) -> float | None:
        """Return the earliest time at which due() could find work, from the state.

        Deferred calls count only while they wait for their time: calls due
        now are being run by task processes, or are started at the next look.
        """
        pulse = self.store.pulse()
        calls = call_queue.next_wait(pulse, now())
        return min((t for t in (pulse.earliest, calls) if t is not None), default=None)

    def catalog(self) -> Catalog:
        """The tasks as data (the last good definitions while the file is broken)."""
        self.pulse()
        return self._catalog

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
            if not same_zone(self._zone_name, here):
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
        return [self._files.error, *errors] if self._files.error else errors

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

    def schedule_of(self, name: str, state: TaskState | None = None) -> Schedule:
        """Return task ``name``'s schedule, with an ``every`` anchored as the state says."""
        info = self._known(name)
        if state is None:
            state = self.store.state(name)
        anchor = (state.anchor or state.first_seen) if state is not None else now()
        schedule = self._schedules.get(info.signature, anchor)
        if schedule is None:
            raise ScheduleError(name, f"{info.signature!r} cannot be read back")
        return schedule

    def states(self) -> dict[str, TaskState]:
        """Each catalogued task's row in the state."""
        tasks = self.catalog().tasks
        return {n: s for n, s in self.store.states().items() if n in tasks}

    # -- claims ------------------------------------------------------------------

    def due(self, trigger: Trigger = Trigger.REQUEST, at: float | None = None) -> list[Claim]:
        """Claim every slot and run-now request due now; return the runs to start.

        Of all processes calling this at once, exactly one claims each slot;
        slots passed while nothing checked follow the task's catch_up.  A slot
        that cannot run (grace, disabled, paused, not loading) is recorded.
        One task's failure is recorded on that task; the others go on.
        """
        from .claims import claim_request, claim_slot, park

        current = now() if at is None else at
        self.pulse(current)
        claims: list[Claim | None] = []
        failed: list[tuple[int, str]] = []  # slots recorded as failed: the task does not load
        due_states = self.store.due_states(current)
        paused = bool(due_states) and active(self.store, current) is not None
        for state in due_states:
            info = self._catalog.tasks.get(state.name)
            if info is None or state.signature != info.signature:
                continue  # removed, or this process's catalog is not the state's
            error = self._why_not(info.name)
            try:
                if state.run_requested is not None and state.run_requested <= current:
                    claims.append(claim_request(self.store, info, state, error, current,
                                                failed, paused=paused))
                if state.next_due is not None and state.next_due <= current:
                    schedule = self.schedule_of(info.name, state)
                    claims.append(claim_slot(self.store, info, state, schedule, error, trigger,
                                             current, failed, paused=paused,
                                             history=self.settings.history))
            except StateError:
                raise
            except Exception as exc:  # a bad value of one task
                problem = park(self.store, info, state, current, exc)
                self._log_once(logging.ERROR, "reqcron: task %s of %s: %s", info.name,
                               self.path, problem)
        self._tell(failed)
        return [c for c in claims if c is not None]

    def _why_not(self, name: str) -> str | None:
        """Why ``name``'s due slots are recorded as failed rather than started, or None
        (a reqcron.toml that does not load would stop every task process: say so)."""
        if self._files.error is not None:
            return f"{CONFIG_FILE} does not load: {self._files.error}"
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
                          self._why_not(name), trigger, current,
                          paused=active(self.store, current) is not None,
                          history=self.settings.history)

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
        """Write the outcomes this host's spool keeps, then record the runs whose process
        died (see reaping.py); return how many died.  Their notifications go out from a
        thread of their own (see alerts.notify_in_thread)."""
        from .reaping import reap
        from .spool import spool_dir

        corrected: list[int] = []
        ended = reap(self.store, name, spool_dir(self.settings.state_dir), corrected=corrected)
        told = [(run.id, run.task) for run in ended if run.call is None and run.id]
        for run_id in corrected:  # their failure may have been told: tell the truth too
            if (run := self.store.get_run(run_id)) is not None and run.call is None:
                told.append((run_id, run.task))
        self._tell(told)
        return len(ended)

    def _tell(self, runs: list[tuple[int, str]]) -> None:
        """Notify about runs (id, task) this process recorded as failed, from a thread of
        their own; nothing is read unless a task has somewhere to notify."""
        tell = [(run_id, info.notify) for run_id, task in runs
                if (info := self._catalog.tasks.get(task))
                and (info.notify or self.settings.notify)]
        if tell:
            from ..alerts import notify_in_thread

            notify_in_thread(self.settings, self.store, self.zone, tell)

    def close(self) -> None:
        """Close the state's connection (a later use opens it again)."""
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Docroot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

