"""Who may write where: the private state dir, a safe __tasks__.py, the owner to run as.

Stdlib only, and cheap to import: task processes use it before run().
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import StateError

TASKS_FILE = "__tasks__.py"  # re-exported by config, its usual home


def is_inside(path: os.PathLike[str] | str, folder: os.PathLike[str] | str) -> bool:
    """Return True when the real path of ``path`` is ``folder`` or below it."""
    real = os.path.realpath(path)  # resolves what exists; the rest is taken as written
    top = os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def ensure_private_dir(path: Path) -> None:
    """Make ``path`` a directory only its owner can use (0700), whatever the umask.

    Missing parents are created 0700 too.  An existing directory owned by
    another user, or writable by everyone, is refused with StateError; one
    with other group/other bits is tightened to 0700, with a warning.
    """
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue  # another process made it first: checked below like any existing dir
        except OSError as exc:
            raise StateError(str(path), f"cannot create {folder}: {exc.strerror or exc}") from None
        try:
            os.chmod(folder, 0o700)  # the umask may have taken bits from the owner too
        except OSError as exc:
            raise StateError(str(path), f"cannot set the mode of {folder}: {exc}") from None
    _check_private(path)


def _check_private(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StateError(str(path), exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(str(path), "it is not a directory")
    me = os.geteuid()
    if st.st_uid != me:
        raise StateError(
            str(path),
            f"it belongs to {user_name(st.st_uid)}, not to {user_name(me)}; "
            "state is private to the user that runs reqcron",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        raise StateError(
            str(path), f"it is writable by every user (mode {mode:04o}); make it 0700 or move it"
        )
    if mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            problem = f"cannot make it private (mode {mode:04o}): {exc}"
            raise StateError(str(path), problem) from None
        import logging  # only here: a task process should not pay for it otherwise

        logging.getLogger("reqcron").warning(
            "reqcron: state dir %s was open to others (mode %04o); made it 0700", path, mode
        )


def check_tasks_safety(docroot: Path) -> str | None:
    """Return why DOCROOT's tasks must not be loaded (writable by everyone), or None."""
    for path, what in ((docroot, "the DOCROOT"), (docroot / TASKS_FILE, TASKS_FILE)):
        try:
            st = os.stat(path)
        except OSError:
            continue  # missing or unreadable: the loader reports that in its own words
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_IWOTH:
            return (
                f"refusing to load tasks: {what} {path} is writable by every user "
                f"(mode {mode:04o}), so anyone could make reqcron run their code; "
                f"remove the write bit for others (chmod o-w {path})"
            )
    return None


def folder_risk(folder: str | os.PathLike[str], trusted: set[int] | None = None) -> str | None:
    """Return why another user could put code in ``folder`` (or swap it), or None.

    The folder and every folder above it (its real path) must belong to
    root, this user or a ``trusted`` one, and none may be writable by every
    user, except an ancestor with the sticky bit (like /tmp), where others
    cannot rename what is not theirs.
    """
    owners = {0, os.geteuid(), *(trusted or ())}
    real = os.path.realpath(folder)
    probe = real
    while True:
        try:
            st = os.stat(probe)
        except OSError as exc:
            return f"{probe} cannot be read ({exc.strerror or exc})"
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in owners:
            return f"{probe} belongs to {user_name(st.st_uid)}"
        if mode & stat.S_IWOTH and (probe == real or not mode & stat.S_ISVTX):
            return f"{probe} is writable by every user (mode {mode:04o})"
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent


def docroot_owner(docroot: Path) -> set[int]:
    """The user who owns the DOCROOT (trusted with its task code), as a set; empty if unknown."""
    try:
        return {os.stat(docroot).st_uid}
    except OSError:
        return set()


def owner_warning(docroot: Path) -> str | None:
    """Return a warning when this user is not the owner of DOCROOT's tasks, or None."""
    tasks = docroot / TASKS_FILE
    for path, what in ((tasks, f"the DOCROOT's {TASKS_FILE}"), (docroot, "the DOCROOT")):
        try:
            owner = os.stat(path).st_uid
        except OSError:
            continue
        me = os.geteuid()
        if owner == me:
            return None
        them = user_name(owner)
        return (
            f"you are {user_name(me)} but {what} belongs to {them}: state is per user, "
            f"so run every trigger (server, crontab, reqcron) as {them}"
        )
    return None


def user_name(uid: int) -> str:
    """Return the login name of ``uid``, or "uid N" when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def docroot_path(path: str | os.PathLike[str]) -> Path:
    """The real path of the DOCROOT ``path``; DocrootError if it is not one."""
    from .errors import DocrootError

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DocrootError(str(path))
    # A folder whose tasks are all in modules (a Django project's cron.py
    # files) needs only its reqcron.toml.
    if not (root / TASKS_FILE).is_file() and not (root / "reqcron.toml").is_file():
        raise DocrootError(str(path), f"has no {TASKS_FILE}")
    return root.resolve()
