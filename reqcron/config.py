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

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import tzinfo
    from typing import Any
    from zoneinfo import ZoneInfo

CONFIG_FILE = "reqcron.toml"
HISTORY_MAX = 1_000_000  # runs kept per task; more would only make the state slow
LOCALTIME = "localtime"  # the zone name of /etc/localtime when it has no IANA name

_KEYS = {"timezone", "state_dir", "database", "python", "history", "site"}
_SITE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COMMAND = re.compile(r"[A-Za-z0-9._+-]+")


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
    ):
        self.docroot = docroot
        self.timezone = timezone  # None: the zone kept in the state (see Docroot.zone_name)
        self.state_dir = state_dir
        self.database = database
        self.python = python or default_python()
        self.history = history
        self.config: Mapping[str, Any] = MappingProxyType(dict(config or {}))
        self.site = site  # None: the state is keyed by the DOCROOT's real path


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


def zone_named(name: str, *, etc: Path | None = None) -> ZoneInfo:
    """Return the IANA zone ``name``, or /etc/localtime for "localtime"; raises ValueError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name == LOCALTIME:
        path = (etc or Path("/etc")) / "localtime"
        try:
            with open(path, "rb") as fh:
                return ZoneInfo.from_file(fh, key=LOCALTIME)
        except (OSError, ValueError) as exc:
            raise ValueError(f"time zone {name!r} cannot be read from {path}: {exc}") from None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def zone_name(zone: tzinfo) -> str:
    """Return the name zone_named() turns back into ``zone``; ValueError when it has none."""
    from datetime import timedelta, timezone

    key = getattr(zone, "key", None) or getattr(zone, "zone", None)  # zoneinfo; pytz
    if isinstance(key, str):
        zone_named(key)  # a ZoneInfo.from_file() key may name nothing loadable
        return key
    if isinstance(zone, timezone):
        offset = zone.utcoffset(None)
        hours, rest = divmod(offset, timedelta(hours=1))
        if not rest and -12 <= hours <= 14:
            # POSIX style: Etc/GMT-1 is one hour *ahead* of UTC.
            return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"
    raise ValueError(f"time zone {zone!r} has no IANA name")


def local_zone(etc: Path | None = None, tzdirs: Sequence[Path] | None = None) -> ZoneInfo:
    """Return the system's local zone, under its IANA name where one can be found."""
    return zone_named(local_zone_name(etc, tzdirs), etc=etc)


def local_zone_name(etc: Path | None = None, tzdirs: Sequence[Path] | None = None) -> str:
    """Return the IANA name of the local zone, else "localtime" (which zone_named() reads).

    Looks, in order, at $TZ, the /etc/localtime symlink, Debian's
    /etc/timezone (when it agrees with /etc/localtime), and the zone files
    whose bytes equal /etc/localtime's.  ``etc`` and ``tzdirs`` (default:
    zoneinfo.TZPATH) stand in for /etc and the zone folders in tests.
    """
    etc = etc or Path("/etc")
    dirs = tuple(tzdirs) if tzdirs is not None else _system_tzdirs()
    key = (os.environ.get("TZ"), str(etc), dirs, _signature(etc / "localtime"),
           _signature(etc / "timezone"))  # fmt: skip
    if not _local_cache or _local_cache[0][0] != key:
        _local_cache[:] = [(key, _find_local_zone_name(etc, dirs))]
    return _local_cache[0][1]


_local_cache: list[tuple[object, str]] = []  # (what it depends on, the name found)
_SEARCH_LIMIT = 5000  # zone files compared at most: give up rather than walk a huge tree


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


def _system_tzdirs() -> tuple[Path, ...]:
    import zoneinfo

    return tuple(Path(p) for p in zoneinfo.TZPATH)


def _loadable(name: str) -> bool:
    try:
        zone_named(name)
    except ValueError:
        return False
    return name != LOCALTIME


def _find_local_zone_name(etc: Path, tzdirs: tuple[Path, ...]) -> str:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and not os.path.isabs(tz) and _loadable(tz):
        return tz
    if tz and os.path.isabs(tz):
        name = _name_of_file(Path(tz), tzdirs)
        if name:
            return name
    localtime = etc / "localtime"
    if not os.path.lexists(localtime):
        return "UTC"  # what the C library (and so cron, and date) uses then
    name = _name_of_file(localtime, tzdirs, etc / "timezone")
    return name or LOCALTIME


def _name_of_file(path: Path, tzdirs: tuple[Path, ...], hint: Path | None = None) -> str | None:
    """Return the IANA name of the zone file at ``path``: from its symlinks, else its bytes."""
    link = path
    for _ in range(8):  # the first link into a zoneinfo folder names the zone chosen
        try:
            target = os.path.join(os.path.dirname(link), os.readlink(link))
        except OSError:
            break
        if "zoneinfo/" in target:
            name = target.rsplit("zoneinfo/", 1)[1].removeprefix("posix/")
            if _loadable(name):
                return name
        link = Path(target)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hint is not None:
        try:
            named = hint.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        except (OSError, UnicodeDecodeError):
            named = ""
        if named and _loadable(named) and any(_same(d / named, data) for d in tzdirs):
            return named
    return _search_zone_files(data, tzdirs)


def _same(path: Path, data: bytes) -> bool:
    try:
        return os.path.getsize(path) == len(data) and path.read_bytes() == data
    except (OSError, ValueError):
        return False


def _search_zone_files(data: bytes, tzdirs: tuple[Path, ...]) -> str | None:
    """Return the best name of a zone file with exactly ``data``, looking at a bounded number."""
    if not data.startswith(b"TZif"):
        return None
    seen = 0
    matches: list[str] = []
    for top in tzdirs:
        for folder, subdirs, files in os.walk(top):
            if folder == str(top):
                subdirs[:] = [d for d in subdirs if d not in ("posix", "right")]
            subdirs.sort()
            for file in sorted(files):
                seen += 1
                if seen > _SEARCH_LIMIT:
                    return _best(matches, tzdirs)
                path = Path(folder, file)
                if not path.is_symlink() and _same(path, data):
                    name = path.relative_to(top).as_posix()
                    if _loadable(name):
                        matches.append(name)
        if matches:
            break
    return _best(matches, tzdirs)


def _best(names: list[str], tzdirs: tuple[Path, ...]) -> str | None:
    """Prefer a zone listed in zone1970.tab, then an Area/Location name, then any."""
    if len(names) < 2:
        return names[0] if names else None
    listed: set[str] = set()
    for top in tzdirs:
        for tab in ("zone1970.tab", "zone.tab"):
            try:
                lines = (top / tab).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            listed.update(f.split("\t")[2] for f in lines if f[:1] != "#" and f.count("\t") >= 2)
    return min(names, key=lambda n: (n not in listed, "/" not in n or n.startswith("Etc/"), n))


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

