"""reqcron.toml settings, where state lives, who may write the tasks, and time zones."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import reqcron.schedule.zones
from reqcron.config import HISTORY_MAX, Settings, load_settings, path_key
from reqcron.errors import ConfigError, StateError
from reqcron.paths import check_tasks_safety, ensure_private_dir, owner_warning
from reqcron.schedule.zones import (
    local_zone,
    local_zone_name,
    same_zone,
    zone_name,
    zone_named,
)

SYSTEM_ZONEINFO = Path("/usr/share/zoneinfo")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
needs_zoneinfo = pytest.mark.skipif(
    not (SYSTEM_ZONEINFO / "Europe/Amsterdam").exists(), reason="no system zoneinfo"
)


def docroot(tmp_path: Path, toml: str | None = None, name: str = "site") -> Path:
    root = tmp_path / name
    root.mkdir(parents=True)
    if toml is not None:
        (root / "reqcron.toml").write_text(textwrap.dedent(toml))
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- state_dir -----------------------------------------------------------------


def test_a_relative_state_dir_is_resolved_against_the_docroot(tmp_path, monkeypatch):
    root = docroot(tmp_path, '[reqcron]\nstate_dir = "../mystate"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("site"))  # a relative DOCROOT too
    assert settings.state_dir == tmp_path / "mystate"
    assert settings.state_dir.is_absolute()
    assert load_settings(root).state_dir == tmp_path / "mystate"


def test_a_relative_state_dir_follows_the_docroots_real_path(tmp_path):
    # Every trigger must find one state, whichever symlink names the DOCROOT.
    real = docroot(tmp_path, '[reqcron]\nstate_dir = "../state"\n', name="releases/r1")
    (tmp_path / "current").symlink_to(real)
    assert load_settings(tmp_path / "current").state_dir == tmp_path / "releases" / "state"
    assert load_settings(real).state_dir == tmp_path / "releases" / "state"


@pytest.mark.parametrize("state_dir", ["state", "./private/state", "."])
def test_a_state_dir_inside_the_docroot_is_refused(tmp_path, state_dir):
    root = docroot(tmp_path, f'[reqcron]\nstate_dir = "{state_dir}"\n')
    with pytest.raises(ConfigError, match="inside the DOCROOT .* web server may serve") as info:
        load_settings(root)
    assert "reqcron.toml" in str(info.value)


def test_a_state_dir_inside_the_docroot_through_a_symlink_is_refused(tmp_path):
    root = docroot(tmp_path)
    (tmp_path / "alias").symlink_to(root)
    (root / "reqcron.toml").write_text(f'[reqcron]\nstate_dir = "{tmp_path / "alias" / "st"}"\n')
    with pytest.raises(ConfigError, match="state_dir .* is inside the DOCROOT"):
        load_settings(root)


def test_a_default_state_dir_inside_the_docroot_is_refused(tmp_path, monkeypatch):
    root = docroot(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(root / ".state"))
    with pytest.raises(
        ConfigError, match="default state dir .*XDG_STATE_HOME.* inside the DOCROOT"
    ):
        load_settings(root)


def test_a_relative_xdg_state_home_is_ignored(tmp_path, monkeypatch):
    root = docroot(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    state = load_settings(root).state_dir
    assert state.parent == tmp_path / "home" / ".local" / "state" / "reqcron"


# -- site ----------------------------------------------------------------------


def test_site_keys_the_default_state_dir(tmp_path, state_home):
    settings = load_settings(docroot(tmp_path, '[reqcron]\nsite = "shop.example_1-a"\n'))
    assert settings.site == "shop.example_1-a"
    assert settings.state_dir == state_home / "reqcron" / "site-shop.example_1-a"


def test_without_site_settings_have_none_and_the_state_is_keyed_by_path(tmp_path, state_home):
    settings = load_settings(docroot(tmp_path))
    assert settings.site is None
    assert settings.state_dir.parent == state_home / "reqcron"
    assert settings.state_dir.name.endswith("-" + path_key(tmp_path / "site"))
    assert Settings(tmp_path, None, tmp_path).site is None


def test_a_site_keeps_one_state_when_the_current_symlink_moves(tmp_path):
    releases = [docroot(tmp_path, '[reqcron]\nsite = "shop"\n', name=f"r{i}") for i in (1, 2)]
    plain = [docroot(tmp_path, "", name=f"p{i}") for i in (1, 2)]
    current, other = tmp_path / "current", tmp_path / "other"
    current.symlink_to(releases[0])
    other.symlink_to(plain[0])
    before, before_plain = load_settings(current).state_dir, load_settings(other).state_dir
    current.unlink()
    current.symlink_to(releases[1])
    other.unlink()
    other.symlink_to(plain[1])
    assert load_settings(current).state_dir == before
    assert load_settings(other).state_dir != before_plain  # why site= exists


@pytest.mark.parametrize(
    "value", ['""', '"a b"', '"../etc"', '"a/b"', f'"{"x" * 65}"', "5", '"été"']
)
def test_a_bad_site_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="site must be"):
        load_settings(docroot(tmp_path, f"[reqcron]\nsite = {value}\n"))


# -- every setting's type and range ----------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("history = 73786976294838206464", "history must be a whole number from 1 to 1000000"),
        ("history = 1_000_001", "history must be a whole number from 1 to 1000000, not 1000001"),
        ("history = 0", "history must be"),
        ("history = -5", "history must be"),
        ("history = true", "history must be .*, not true"),
        ("history = 1.5", "history must be .*, not 1.5"),
        ('history = "100"', "history must be .*, not '100'"),
        ('python = "venv/bin/python"', "python must be an absolute path or a bare command name"),
        ('python = "python3 -X dev"', "python must be an absolute path"),
        ("python = 3", "python must be a non-empty string, not 3"),
        ('python = ""', "python must be a non-empty string"),
        ("timezone = 1", "timezone must be a non-empty string"),
        ('timezone = "Nowhere/Here"', "unknown time zone 'Nowhere/Here'"),
        ("state_dir = []", "state_dir must be a non-empty string, not an array"),
        ('state_dir = "  "', "state_dir must be a non-empty string"),
        ('state_dir = "/tmp/a\\u0000b"', "state_dir must not contain a NUL"),
        ("database = {}", "database must be a non-empty string, not a table"),
        ("site = false", "site must be a non-empty string, not false"),
    ],
)
def test_each_bad_setting_gives_one_clear_error(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(docroot(tmp_path, f"[reqcron]\n{setting}\n"))
    assert str(info.value).startswith(str(tmp_path / "site" / "reqcron.toml"))


def test_good_settings_at_their_limits_load(tmp_path):
    settings = load_settings(
        docroot(tmp_path, f'[reqcron]\nhistory = {HISTORY_MAX}\npython = "python3"\n')
    )
    assert settings.history == HISTORY_MAX and settings.python == "python3"
    other = load_settings(docroot(tmp_path, '[reqcron]\npython = "/srv/v/bin/python"\n', "b"))
    assert other.python == "/srv/v/bin/python"


# -- ensure_private_dir ---------------------------------------------------------


def test_missing_parents_are_made_0700_even_with_umask_0(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    script = (
        "import os, sys; from pathlib import Path; os.umask(0); "
        "from reqcron.paths import ensure_private_dir; ensure_private_dir(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, timeout=60)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode(folder) == 0o700, folder


def test_a_umask_that_takes_the_owners_bits_still_gives_usable_dirs(tmp_path):
    old = os.umask(0o377)
    try:
        ensure_private_dir(tmp_path / "x" / "y")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x") == 0o700 and mode(tmp_path / "x" / "y") == 0o700


def test_an_existing_private_dir_is_left_alone_silently(tmp_path, caplog):
    (tmp_path / "st").mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="reqcron"):
        ensure_private_dir(tmp_path / "st")
    assert mode(tmp_path / "st") == 0o700 and not caplog.records


@pytest.mark.parametrize("loose", [0o750, 0o755, 0o705, 0o770])
def test_an_existing_dir_open_to_others_is_tightened_with_a_warning(tmp_path, caplog, loose):
    folder = tmp_path / "st"
    folder.mkdir()
    os.chmod(folder, loose)
    with caplog.at_level(logging.WARNING, logger="reqcron"):
        ensure_private_dir(folder)
    assert mode(folder) == 0o700
    assert [r.name for r in caplog.records] == ["reqcron"]
    assert f"mode {loose:04o}" in caplog.records[0].getMessage()


@pytest.mark.parametrize("loose", [0o777, 0o1777, 0o703])
def test_a_world_writable_state_dir_is_refused(tmp_path, loose):
    folder = tmp_path / "st"
    folder.mkdir()
    os.chmod(folder, loose)
    with pytest.raises(StateError, match="writable by every user"):
        ensure_private_dir(folder)
    assert mode(folder) == loose  # left for the administrator to look at


@as_root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path):
    folder = tmp_path / "st"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(StateError, match=f"belongs to {pwd.getpwuid(65534).pw_name}, not to"):
        ensure_private_dir(folder)


def test_a_file_where_the_state_dir_should_be_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(StateError, match="not a directory"):
        ensure_private_dir(tmp_path / "f")
    with pytest.raises(StateError, match="cannot create"):
        ensure_private_dir(tmp_path / "f" / "inner")


# -- check_tasks_safety / owner_warning -------------------------------------------


def tasks_docroot(tmp_path: Path) -> Path:
    root = docroot(tmp_path)
    os.chmod(root, 0o755)
    (root / "__tasks__.py").write_text("")
    os.chmod(root / "__tasks__.py", 0o644)
    return root


def test_ordinary_modes_are_safe(tmp_path):
    root = tasks_docroot(tmp_path)
    assert check_tasks_safety(root) is None
    os.chmod(root / "__tasks__.py", 0o664)  # group-writable: a team's deploy, allowed
    os.chmod(root, 0o775)
    assert check_tasks_safety(root) is None
    (root / "__tasks__.py").unlink()
    assert check_tasks_safety(root) is None


def test_a_world_writable_tasks_file_is_refused(tmp_path):
    root = tasks_docroot(tmp_path)
    os.chmod(root / "__tasks__.py", 0o666)
    refusal = check_tasks_safety(root)
    assert refusal and "__tasks__.py" in refusal and "writable by every user" in refusal
    assert "\n" not in refusal


@pytest.mark.parametrize("loose", [0o777, 0o1777])
def test_a_world_writable_docroot_is_refused(tmp_path, loose):
    root = tasks_docroot(tmp_path)
    os.chmod(root, loose)
    refusal = check_tasks_safety(root)
    assert refusal and "the DOCROOT" in refusal and f"{loose:04o}" in refusal


def test_no_owner_warning_for_the_owner(tmp_path):
    assert owner_warning(tasks_docroot(tmp_path)) is None


@as_root
def test_the_owner_warning_names_both_users(tmp_path):
    root = tasks_docroot(tmp_path)
    os.chown(root / "__tasks__.py", 65534, 65534)
    me, them = pwd.getpwuid(os.geteuid()).pw_name, pwd.getpwuid(65534).pw_name
    assert owner_warning(root) == (
        f"you are {me} but the DOCROOT's __tasks__.py belongs to {them}: state is per user, "
        f"so run every trigger (server, crontab, reqcron) as {them}"
    )


@as_root
def test_the_owner_warning_falls_back_to_uid_numbers_and_the_docroot(tmp_path):
    uid = next(u for u in range(54321, 60000) if not _has_name(u))
    root = docroot(tmp_path)
    os.chown(root, uid, uid)
    warning = owner_warning(root)
    assert warning and f"the DOCROOT belongs to uid {uid}" in warning
    assert warning.endswith(f"as uid {uid}")


def _has_name(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# -- time zones ---------------------------------------------------------------------


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """An /etc and a zoneinfo folder in tmp_path, with TZ unset."""
    monkeypatch.delenv("TZ", raising=False)
    etc, zones = tmp_path / "etc", tmp_path / "zoneinfo"
    etc.mkdir()
    for name in ("Europe/Amsterdam", "America/New_York", "Asia/Tokyo", "Etc/UTC"):
        (zones / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SYSTEM_ZONEINFO / name, zones / name)
    return etc, zones


def same_offsets(a: tzinfo, b: tzinfo) -> bool:
    moments = [datetime(2024, m, 15, 12, tzinfo=UTC) for m in (1, 4, 7, 10)]
    return all(t.astimezone(a).utcoffset() == t.astimezone(b).utcoffset() for t in moments)


def loads_here(*names: str) -> None:
    """Skip a test about zone names this system does not have (Debian keeps some apart)."""
    for name in names:
        try:
            zone_named(name)
        except ValueError:
            pytest.skip(f"no zone named {name} here")


@needs_zoneinfo
@pytest.mark.parametrize(("a", "b"), [
    ("UTC", "Etc/UTC"), ("Etc/Universal", "Zulu"), ("Universal", "UTC"), ("GMT-0", "Etc/UTC"),
    ("GMT", "UTC"), ("US/Eastern", "America/New_York"),
])
def test_names_of_one_zone_are_the_same_zone(a, b):
    loads_here(a, b)
    assert same_zone(a, b) and same_zone(b, a)


@needs_zoneinfo
@pytest.mark.parametrize(("a", "b"), [
    ("UTC", "Europe/London"), ("Etc/GMT-1", "UTC"), ("Europe/Amsterdam", "Asia/Tokyo"),
    ("Nowhere/Such", "UTC"), ("../zoneinfo/UTC", "UTC"),
])
def test_names_of_different_zones_are_not_the_same_zone(a, b):
    assert not same_zone(a, b) and not same_zone(b, a)


@pytest.mark.skipif(not Path("/etc/localtime").exists(), reason="no /etc/localtime")
def test_the_systems_localtime_is_the_same_zone_as_its_own_name():
    assert same_zone("localtime", zone_name(local_zone()))
    assert same_zone("Nowhere/Such", "Nowhere/Such")  # an unknown name is only itself


@needs_zoneinfo
def test_a_copied_localtime_is_named_by_its_bytes(fake_system):
    etc, zones = fake_system
    shutil.copy(zones / "Europe/Amsterdam", etc / "localtime")  # a plain file, as in many images
    zone = local_zone(etc=etc, tzdirs=[zones])
    assert zone.key == "Europe/Amsterdam"
    assert zone_named(zone_name(zone)).key == "Europe/Amsterdam"


@needs_zoneinfo
def test_a_localtime_symlink_names_the_zone(fake_system):
    etc, zones = fake_system
    (etc / "localtime").symlink_to(zones / "Asia/Tokyo")
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "Asia/Tokyo"


@needs_zoneinfo
def test_debians_etc_timezone_picks_among_identical_zone_files(fake_system):
    etc, zones = fake_system
    shutil.copy(zones / "Europe/Amsterdam", zones / "Europe/Brussels")
    shutil.copy(zones / "Europe/Amsterdam", etc / "localtime")
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "Europe/Amsterdam"  # no hint: first
    (etc / "timezone").write_text("Europe/Brussels\n")
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "Europe/Brussels"


@needs_zoneinfo
def test_a_stale_etc_timezone_is_not_believed(fake_system):
    etc, zones = fake_system
    shutil.copy(zones / "America/New_York", etc / "localtime")
    (etc / "timezone").write_text("Asia/Tokyo\n")
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "America/New_York"


@needs_zoneinfo
def test_tz_in_the_environment_comes_first(fake_system, monkeypatch):
    etc, zones = fake_system
    shutil.copy(zones / "Europe/Amsterdam", etc / "localtime")
    monkeypatch.setenv("TZ", ":Asia/Tokyo")
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "Asia/Tokyo"
    monkeypatch.setenv("TZ", str(zones / "America/New_York"))
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "America/New_York"
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")  # POSIX rules: no IANA name
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "Europe/Amsterdam"


@needs_zoneinfo
def test_an_unknown_localtime_is_named_localtime_and_round_trips(fake_system, tmp_path):
    etc, _ = fake_system
    shutil.copy(SYSTEM_ZONEINFO / "Asia/Kolkata", etc / "localtime")
    empty = tmp_path / "empty"
    empty.mkdir()
    zone = local_zone(etc=etc, tzdirs=[empty])
    assert zone.key == "localtime" and zone_name(zone) == "localtime"
    again = zone_named(zone_name(zone), etc=etc)
    assert same_offsets(again, ZoneInfo("Asia/Kolkata"))


@needs_zoneinfo
def test_the_search_of_zone_files_gives_up_when_bounded(fake_system, monkeypatch):
    etc, zones = fake_system
    shutil.copy(zones / "Etc/UTC", etc / "localtime")  # sorted last of the four
    monkeypatch.setattr(reqcron.schedule.zones, "_SEARCH_LIMIT", 2)
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "localtime"


@needs_zoneinfo
def test_no_localtime_means_utc(fake_system):
    etc, zones = fake_system
    assert local_zone_name(etc=etc, tzdirs=[zones]) == "UTC"


def test_zone_named_localtime_reads_etc_localtime():
    if not os.path.exists("/etc/localtime"):
        pytest.skip("no /etc/localtime here")
    zone = zone_named("localtime")
    assert zone.key == "localtime"
    with open("/etc/localtime", "rb") as fh:
        assert same_offsets(zone, ZoneInfo.from_file(fh))


@pytest.mark.parametrize(
    "zone",
    [
        ZoneInfo("Europe/Amsterdam"),
        UTC,
        timezone(timedelta(hours=-5)),
        timezone(timedelta(hours=14)),
        timezone(timedelta(hours=-12)),
    ],
    ids=str,
)
def test_zone_names_round_trip_through_zone_named(zone):
    assert same_offsets(zone_named(zone_name(zone)), zone)


def test_the_local_zone_round_trips():
    zone = local_zone()
    assert same_offsets(zone_named(zone_name(zone)), zone)


@pytest.mark.parametrize("zone", [timezone(timedelta(hours=5, minutes=30)), timezone.min])
def test_a_zone_without_a_name_says_so(zone):
    with pytest.raises(ValueError, match="has no IANA name"):
        zone_name(zone)


def test_a_zone_from_a_file_without_a_loadable_key_says_so():
    with open(SYSTEM_ZONEINFO / "Etc/UTC", "rb") as fh:
        keyless = ZoneInfo.from_file(fh, key="my-own-zone")
    with pytest.raises(ValueError, match="unknown time zone 'my-own-zone'"):
        zone_name(keyless)
    with open(SYSTEM_ZONEINFO / "Etc/UTC", "rb") as fh:
        nameless = ZoneInfo.from_file(fh)
    with pytest.raises(ValueError, match="has no IANA name"):
        zone_name(nameless)
