"""Time zones by name: IANA names that round-trip, and the system's local zone.

A zone is always kept and passed by its name (in the state, in schedule
signatures), so ``zone_named(zone_name(z))`` must give ``z`` back, even for
a system whose /etc/localtime is a plain copy ("localtime").
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import tzinfo
    from zoneinfo import ZoneInfo

LOCALTIME = "localtime"  # the zone name of /etc/localtime when it has no IANA name


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


def same_zone(a: str, b: str) -> bool:
    """Whether the zone names ``a`` and ``b`` name one zone, as a schedule sees it.

    The tz database gives many zones several names (links: ``UTC``,
    ``Etc/UTC``, ``Etc/Universal``, ``Zulu``; ``GMT-0``, ``Etc/GMT``;
    ``US/Eastern``, ``America/New_York``), and a system names its own zone
    by whichever its /etc/localtime or $TZ uses, so names alone disagree
    where the zones do not.  Compare names with this, never with ``==``.
    """
    return a == b or _identity(a) == _identity(b)


_UTC = b"UTC"  # the identity of every zone that is UTC under some name


def _identity(name: str) -> bytes | str:
    """What ``name`` stands for: its zone file's bytes, else (unknown) the name itself."""
    known = _identities.get(name)
    if known is not None:
        return known
    data = _zone_data(name)
    if data is not None and data in (_zone_data("Etc/UTC"), _zone_data("Etc/GMT")):
        # UTC and GMT differ only in their abbreviation, never in an offset.
        data = _UTC
    if len(_identities) > 256:  # names come from settings and tasks: few, but bounded
        _identities.clear()
    found = _identities[name] = data if data is not None else name
    return found


_identities: dict[str, bytes | str] = {}


def _zone_data(name: str) -> bytes | None:
    """The bytes of zone ``name``'s file, where zoneinfo reads it from; None when none."""
    try:
        zone_named(name)  # refuses paths that are no zone name ("../x", "/etc/passwd")
    except ValueError:
        return None
    if name == LOCALTIME:
        paths = [Path("/etc/localtime")]
    else:
        paths = [Path(top, name) for top in _system_tzdirs()]
    for path in paths:
        try:
            return path.read_bytes()
        except OSError:
            continue
    try:  # no system zone files: zoneinfo reads the tzdata package's
        from importlib import resources

        return resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).read_bytes()
    except (ImportError, OSError, ValueError):
        return None


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
