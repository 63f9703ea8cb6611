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
from .records import Record

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from typing import Any
    from zoneinfo import ZoneInfo

CONFIG_FILE = "reqcron.toml"
TASKS_FILE = "__tasks__.py"

_KEYS = {"timezone", "state_dir", "database", "python", "history"}


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
        "_zone",
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
    ):
        self.docroot = docroot
        self.timezone = timezone  # None: the system's local zone
        self.state_dir = state_dir
        self.database = database
        self.python = python or default_python()
        self.history = history
        self.config: Mapping[str, Any] = MappingProxyType(dict(config or {}))
        self._zone: ZoneInfo | None = None

    @property
    def zone(self) -> ZoneInfo:
        """The zone schedules are read in (resolved on first use: zoneinfo is slow to load)."""
        if self._zone is None:
            self._zone = zone_named(self.timezone) if self.timezone else local_zone()
        return self._zone


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
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(str(path), f"{key} must be a non-empty string")
        return value

    zone_name = text("timezone")
    if zone_name:
        try:
            zone_named(zone_name)
        except ValueError as exc:
            raise ConfigError(str(path), str(exc)) from None
    state = text("state_dir")
    state_dir = Path(state).expanduser() if state else default_state_dir(docroot)
    if not state_dir.is_absolute():
        state_dir = docroot / state_dir
    history = section.get("history", 100)
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError(str(path), "history must be a whole number of at least 1")
    return Settings(
        docroot=docroot,
        timezone=zone_name,
        state_dir=state_dir,
        database=text("database"),
        python=text("python") or default_python(),
        history=history,
        config=config,
    )


def zone_named(name: str) -> ZoneInfo:
    """Return the IANA zone ``name``; raises ValueError naming it."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def local_zone() -> ZoneInfo:
    """Return the system's local zone as a ZoneInfo, so DST is followed."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return ZoneInfo(target.split("zoneinfo/", 1)[1])
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def default_state_dir(docroot: Path) -> Path:
    """Return the state directory of ``docroot``: per user, keyed by its real path."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
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


def zone_name(zone: object) -> str:
    """Return the name a zone is known by (placeholder until the config branch lands)."""
    return str(getattr(zone, "key", None) or zone)
