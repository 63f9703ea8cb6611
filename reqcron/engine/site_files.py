"""A DOCROOT's files as the engine follows them: its settings, and what its catalog is read from.

Each look is a few stat() calls; a file is re-read (reqcron.toml here, the
task files in a child through catalog_sync) only when its identity changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import CONFIG_FILE, TASKS_FILE, Settings, load_settings
from ..errors import ConfigError
from ..loading.django_apps import cron_files
from ..loading.import_path import module_files
from ..logonce import LogOnce
from ..paths import check_tasks_safety
from ..records import LoadError
from . import catalog_sync


def identity(path: Path) -> tuple[int, ...] | None:
    """What changes when a file is written, replaced or chmod-ed; None if it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


class SiteFiles:
    """The settings of one DOCROOT (the last good ones), and the key of its task files."""

    def __init__(self, path: Path, log_once: LogOnce, on_state_moved: Callable[[], None]):
        self.path = path
        # The file's identity before its contents: a change made while it is
        # read is then seen as a change on the next look.
        config_identity = identity(path / CONFIG_FILE)
        self.settings: Settings = load_settings(path)
        self.error: LoadError | None = None  # why reqcron.toml no longer loads
        self._stamps: tuple[object, ...] = (None, config_identity, None)
        self._key = ""
        self._log_once = log_once
        self._on_state_moved = on_state_moved

    def key(self, zone_name: Callable[[], str]) -> str:
        """Identify what the catalog is read from (re-hashed only when a stat changes).

        That is the tasks file, the task modules' files, the zone, the
        ``modules`` and ``django_settings`` settings and whether the files are
        refused, not reqcron.toml as a whole: its host-local settings
        (state_dir, python) differ between the hosts of one site, which must
        agree on one catalog.  reqcron.toml is re-read here when it changes.
        """
        tasks, config = self.path / TASKS_FILE, self.path / CONFIG_FILE
        config_stamp = identity(config)
        if config_stamp != self._stamps[1]:
            self._reload_settings()
        # Found by walking the import path, never by importing: the web
        # server's processes import no task code.
        modules = module_files(self.path, self.settings.modules)
        if self.settings.django_settings:  # and the apps' cron.py (loading/django_apps.py)
            modules += cron_files(self.path)
        stamps = (identity(tasks), config_stamp, identity(self.path),
                  *(identity(m) for m in modules))
        if stamps != self._stamps:
            # Modes count too: a tasks file others can write is refused, and
            # fixing its mode must be read again.
            refusal = check_tasks_safety(self.path) or ""
            imports = "\0".join([self.settings.django_settings or "", *self.settings.modules])
            key = catalog_sync.files_key((tasks, *modules),
                                         f"{zone_name()}\0{refusal}\0{imports}")
            self._stamps, self._key = stamps, key  # only once the state answered
        return self._key

    def _reload_settings(self) -> None:
        try:
            settings = load_settings(self.path)
            self.error = None
        except ConfigError as exc:  # keep the last good settings
            self.error = LoadError(exc.path, exc.line, exc.problem)
            self._log_once(logging.ERROR, "%s", self.error)
            return
        where = (settings.state, settings.site, settings.state_dir)
        moved = where != (self.settings.state, self.settings.site, self.settings.state_dir)
        self.settings = settings
        if moved:
            self._on_state_moved()
