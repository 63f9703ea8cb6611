"""reqcron.toml -> Settings, with one clear error per problem; time zones; state location."""

from __future__ import annotations

import os
import re
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from .errors import ConfigError
from .paths import TASKS_FILE as TASKS_FILE  # its usual home is here
from .paths import is_inside
from .records import Record
from .schedule.zones import zone_named

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any

CONFIG_FILE = "reqcron.toml"
HISTORY_MAX = 1_000_000  # runs kept per task; more would only make the state slow

_KEYS = {"timezone", "state_dir", "database", "python", "history", "site", "state",
         "max_processes", "result_days", "notify", "smtp", "smtp_user", "smtp_password",
         "smtp_starttls", "smtp_from", "modules", "django_settings"}
MAX_PROCESSES_MAX = 64
_SERVER_STATE = ("postgresql://", "postgres://")
_SITE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COMMAND = re.compile(r"[A-Za-z0-9._+-]+")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Settings(Record):
    """The settings of one DOCROOT, all derived from the DOCROOT alone."""

    __slots__ = (
        "docroot",
        "timezone",
        "state_dir",
        "database",
        "python",
        "history",
        "config",
        "site",
        "state",
        "max_processes",
        "result_days",
        "notify",
        "smtp",
        "smtp_user",
        "smtp_password",
        "smtp_starttls",
        "smtp_from",
        "modules",
        "django_settings",
    )

    def __init__(
        self,
        docroot: Path,
        timezone: str | None,
        state_dir: Path,
        database: str | None = None,
        python: str | None = None,
        history: int = 100,
        config: Mapping[str, Any] | None = None,
        site: str | None = None,
        state: str | None = None,
        max_processes: int = 4,
        result_days: float = 7.0,
        notify: list[str] | None = None,
        smtp: str | None = None,
        smtp_user: str | None = None,
        smtp_password: str | None = None,
        smtp_starttls: bool = False,
        smtp_from: str | None = None,
        modules: tuple[str, ...] = (),
        django_settings: str | None = None,
    ):
        self.docroot = docroot
        self.timezone = timezone  # None: the zone kept in the state (see Docroot.zone_name)
        self.state_dir = state_dir
        self.database = database
        self.python = python or default_python()
        self.history = history
        self.config: Mapping[str, Any] = MappingProxyType(dict(config or {}))
        self.site = site  # None: the state is keyed by the DOCROOT's real path
        self.state = state  # a PostgreSQL URL shared by several hosts; None: SQLite
        self.max_processes = max_processes  # processes running deferred calls at once
        self.result_days = result_days  # days a finished deferred call is kept
        self.notify = notify or []  # notify targets of every task (alerts.py)
        self.smtp = smtp  # "host:port" that mailto: targets are sent through
        self.smtp_user = smtp_user
        self.smtp_password = smtp_password
        self.smtp_starttls = smtp_starttls
        self.smtp_from = smtp_from
        self.modules = modules  # more task modules, by import name (importing.py)
        self.django_settings = django_settings  # task processes call django.setup() first


def load_settings(docroot: Path) -> Settings:
    """Read DOCROOT/reqcron.toml (optional) into Settings; raises ConfigError."""
    path = docroot / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        import tomllib  # only when there is a file: it costs a task process 2 ms

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            raise ConfigError(
                str(path), f"invalid TOML: {exc}", int(match.group(1)) if match else None
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot be read: {exc}") from None
    unknown_tables = set(data) - {"reqcron", "config"}
    if unknown_tables:
        raise ConfigError(
            str(path), f"unknown table [{sorted(unknown_tables)[0]}]; use [reqcron] and [config]"
        )
    section = data.get("reqcron", {})
    config = data.get("config", {})
    if not isinstance(section, dict) or not isinstance(config, dict):
        raise ConfigError(str(path), "[reqcron] and [config] must be tables")
    unknown = set(section) - _KEYS
    if unknown:
        raise ConfigError(
            str(path),
            f"unknown setting {sorted(unknown)[0]!r} in [reqcron]; "
            f"known: {', '.join(sorted(_KEYS))}",
        )

    def text(key: str) -> str | None:
        value = section.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(str(path), f"{key} must be a non-empty string, not {_shown(value)}")
        if "\0" in value:
            raise ConfigError(str(path), f"{key} must not contain a NUL character")
        return value

    timezone = text("timezone")
    if timezone:
        try:
            zone_named(timezone)
        except ValueError as exc:
            raise ConfigError(str(path), str(exc)) from None
    site = text("site")
    if site is not None and not _SITE.fullmatch(site):
        raise ConfigError(
            str(path), f"site must be 1 to 64 letters, digits, '.', '_' or '-', not {site!r}"
        )
    server = text("state")
    if server is not None:
        if not server.startswith(_SERVER_STATE):
            raise ConfigError(str(path), "state must be a PostgreSQL URL (postgresql://...); "
                              "leave it out for SQLite in state_dir")
        if site is None:
            raise ConfigError(str(path), "site is required with a PostgreSQL state: it names "
                              "this site in the state every host shares")
    python = text("python")
    if python is not None and not (os.path.isabs(python) or _COMMAND.fullmatch(python)):
        raise ConfigError(
            str(path),
            f"python must be an absolute path or a bare command name like python3, not {python!r}",
        )
    history = section.get("history", 100)
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= HISTORY_MAX:
        problem = f"history must be a whole number from 1 to {HISTORY_MAX}, not {_shown(history)}"
        raise ConfigError(str(path), problem)
    max_processes = section.get("max_processes", 4)
    if (isinstance(max_processes, bool) or not isinstance(max_processes, int)
            or not 1 <= max_processes <= MAX_PROCESSES_MAX):
        raise ConfigError(str(path), f"max_processes must be a whole number from 1 to "
                          f"{MAX_PROCESSES_MAX}, not {_shown(max_processes)}")
    result_days = section.get("result_days", 7)
    if (isinstance(result_days, bool) or not isinstance(result_days, int | float)
            or not 0 < result_days <= 36500):
        raise ConfigError(str(path), f"result_days must be a number of days above 0, "
                          f"not {_shown(result_days)}")
    from .alerts import targets

    try:
        notify = targets(section.get("notify"), "notify")
    except ValueError as exc:
        raise ConfigError(str(path), str(exc)) from None
    smtp = text("smtp")
    if smtp is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}", smtp):
        raise ConfigError(str(path), f"smtp must be \"host:port\", not {smtp!r}")
    starttls = section.get("smtp_starttls", False)
    if not isinstance(starttls, bool):
        raise ConfigError(str(path), f"smtp_starttls must be true or false, not "
                          f"{_shown(starttls)}")
    modules = section.get("modules", [])
    if not isinstance(modules, list):
        raise ConfigError(str(path), f"modules must be an array of import names like "
                          f"\"shop.jobs\", not {_shown(modules)}")
    for module in modules:
        if not isinstance(module, str) or not _DOTTED.fullmatch(module):
            raise ConfigError(str(path), f"modules must hold import names like \"shop.jobs\", "
                              f"not {_shown(module)}")
    django_settings = text("django_settings")
    if django_settings is not None and not _DOTTED.fullmatch(django_settings):
        raise ConfigError(str(path), f"django_settings must be an import name like "
                          f"\"mysite.settings\", not {django_settings!r}")
    state = text("state_dir")
    if state:
        # Against the DOCROOT's real path, so every trigger finds the same state
        # whichever symlink it reached the DOCROOT through.
        joined = os.path.join(os.path.realpath(docroot), os.path.expanduser(state))
        state_dir = Path(os.path.normpath(joined))
        origin = "state_dir"
    else:
        state_dir = default_state_dir(docroot, site)
        origin = "the default state dir (from XDG_STATE_HOME or HOME)"
    if is_inside(state_dir, docroot):
        raise ConfigError(
            str(path),
            f"{origin} {state_dir} is inside the DOCROOT {os.path.realpath(docroot)}, which a "
            "web server may serve; set state_dir to a directory outside it",
        )
    return Settings(
        docroot=docroot,
        timezone=timezone,
        state_dir=state_dir,
        database=text("database"),
        python=python or default_python(),
        history=history,
        config=config,
        site=site,
        state=server,
        max_processes=max_processes,
        result_days=float(result_days),
        notify=notify,
        smtp=smtp,
        smtp_user=text("smtp_user"),
        smtp_password=text("smtp_password"),
        smtp_starttls=starttls,
        smtp_from=text("smtp_from"),
        modules=tuple(dict.fromkeys(modules)),
        django_settings=django_settings,
    )


def _shown(value: object) -> str:
    """Describe a TOML value in an error message."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return str(value).lower()
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def default_state_dir(docroot: Path, site: str | None = None) -> Path:
    """Return the state directory of ``docroot``: per user, keyed by ``site`` or its real path."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative path is invalid, ignore it
        base = os.path.expanduser("~/.local/state")
    if site:
        return Path(base) / "reqcron" / f"site-{site}"
    real = os.path.realpath(docroot)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", real).strip("-")[-40:] or "root"
    return Path(base) / "reqcron" / f"{slug}-{path_key(docroot)}"


def path_key(path: os.PathLike[str] | str) -> str:
    """Return a short key for the real path of ``path`` (not hashlib: OpenSSL is slow to load)."""
    data = os.path.realpath(path).encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data[::-1]):08x}"


def default_python() -> str:
    """Return the interpreter for task processes: this one, even under uWSGI."""
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    # Under uWSGI sys.executable is the uwsgi binary; the venv's Python is
    # under sys.prefix (sys._base_executable would miss the venv's packages).
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"):
        candidate = os.path.join(sys.prefix, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    return exe or "python3"

