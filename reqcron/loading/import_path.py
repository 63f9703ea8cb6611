"""How task code is imported: the import path, Django's set-up, and ``modules``.

Every process that imports task code (the catalog child, ``runtask``, the
process running deferred calls, ``Docroot.tasks()``) uses the same import
path, derived from the DOCROOT alone so that a crontab line sees what a
request-started run sees: the interpreter's own path (standard library,
installed packages, ``PYTHONPATH``), then the DOCROOT, then its parent.
Appended, never prepended: code beside the tasks never shadows an installed
package.

The web server's processes import none of it: they only stat the modules'
files (``module_files``), found by walking the path as the import system
would, without importing a package's ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.machinery  # loaded at start-up already: these cost nothing
import importlib.util
import os
import sys
from pathlib import Path

from ..config import CONFIG_FILE
from ..paths import docroot_owner, folder_risk
from ..records import LoadError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import CodeType, ModuleType, TracebackType



#: Modules the standard library looks for and does without (other platforms', Jython's):
#: never to be found in a DOCROOT or its parent, where they would run in every task process.
PROBED = frozenset(sys.stdlib_module_names) | {"org", "java"}


def extra_path(docroot: Path) -> list[str]:
    """The entries appended to ``sys.path`` for task code: the DOCROOT, then its parent.

    The parent only when no other user can put code in it (``parent_risk``).
    """
    entries = [str(docroot)]
    if parent_risk(docroot) is None:
        entries.append(str(docroot.parent))
    return list(dict.fromkeys(entries))


def parent_risk(docroot: Path) -> str | None:
    """Why the DOCROOT's parent stays off the import path (another user can write it), or None."""
    return folder_risk(docroot.parent, docroot_owner(docroot))


def extend_path(docroot: Path) -> list[str]:
    """Append the DOCROOT's entries that ``sys.path`` lacks; return the ones added.

    The standard library's names are never found in them (``_Guard``).
    """
    entries = extra_path(docroot)
    added = [entry for entry in entries if entry not in sys.path]
    sys.path.extend(added)
    _Guard.install(entries)
    return added


class _Guard:
    """A meta path finder that keeps the standard library's names out of the DOCROOT's folders.

    ``import msvcrt`` (tried and done without on POSIX) must not find
    DOCROOT/msvcrt.py: it is looked for everywhere but there.
    """

    guarded: set[str] = set()

    @classmethod
    def install(cls, entries: Iterable[str]) -> None:
        cls.guarded.update(entries)
        if cls not in sys.meta_path:
            finders = sys.meta_path
            at = finders.index(importlib.machinery.PathFinder) if (
                importlib.machinery.PathFinder in finders) else len(finders)
            finders.insert(at, cls)

    @classmethod
    def find_spec(cls, name: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or name not in PROBED:
            return None
        elsewhere = [e for e in sys.path if os.path.abspath(e or ".") not in cls.guarded]
        spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec


def setup_django(settings_module: str) -> None:
    """Point Django at ``settings_module`` and set it up (once per process).

    A process where Django is configured already (``Docroot.tasks()`` in a
    Django site) keeps its own settings.
    """
    import django
    from django.conf import settings

    if not settings.configured:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    django.setup()


def django_error(docroot: Path, settings_module: str, exc: BaseException) -> LoadError:
    """Describe why ``django.setup()`` with ``settings_module`` failed, where it failed."""
    return blame(docroot, settings_module, exc,
                 f"django_settings {settings_module!r} does not set up")


def import_module(name: str) -> ModuleType:
    """Import task module ``name`` from its source; afresh when this process imported it before.

    From source, like __tasks__.py: a cached .pyc is trusted when the file's
    mtime (in whole seconds) and size match, so an edit within the second
    of the last read could run stale code.  Only ``Docroot.tasks()`` meets a
    module imported already (the catalog child and task processes are fresh).
    """
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    spec = importlib.util.find_spec(name)  # imports the packages above it, not it
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    if type(spec.loader) is importlib.machinery.SourceFileLoader:
        spec.loader = _FromSource(name, spec.loader.path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


class _FromSource(importlib.machinery.SourceFileLoader):
    """Compile the module from its file every time; read and write no bytecode."""

    def get_code(self, fullname: str) -> CodeType:
        code: CodeType = compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)
        return code


def module_error(docroot: Path, name: str, exc: BaseException) -> LoadError:
    """Describe why task module ``name`` failed to import, at its line."""
    return blame(docroot, name, exc, f"task module {name!r} does not import")


def blame(docroot: Path, name: str, exc: BaseException, what: str) -> LoadError:
    """A LoadError at the line of module ``name`` (or of a package above it) that raised.

    Without such a line (the module is missing) it is reqcron.toml's, which
    names the module.
    """
    message = f"{what}: {type(exc).__name__}: {exc}" if str(exc) else f"{what}: {exc!r}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return LoadError(exc.filename, exc.lineno, f"{what}: SyntaxError: {exc.msg}")
    outer = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    found = _first_frame_in(exc.__traceback__, outer)
    if found is not None:
        return LoadError(found[0], found[1], message)
    if isinstance(exc, ModuleNotFoundError):
        where = ", ".join(extra_path(docroot))
        message += f" (looked in the installed packages, PYTHONPATH and {where})"
        risk = parent_risk(docroot)
        if risk is not None:
            message += f"; not in {docroot.parent}, left off the path as {risk}"
    return LoadError(str(docroot / CONFIG_FILE), None, message)


def _first_frame_in(tb: TracebackType | None, modules: set[str]) -> tuple[str, int] | None:
    """The file and line of the outermost frame running the code of one of ``modules``."""
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in modules:
            return tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return None


def module_files(docroot: Path, names: Iterable[str]) -> list[Path]:
    """The source file of each module in ``names``, found without importing anything.

    Like the import system: the first path entry holding the top-level
    package (or module) wins, and the rest of the name is a path inside it.
    A module not found yet is given as its file in the DOCROOT, so creating
    it is noticed.  Extension modules and zip imports are not followed.
    """
    if not names:
        return []
    entries = [p for p in sys.path if p and os.path.isabs(p)]
    entries += [e for e in extra_path(docroot) if e not in entries]
    found = []
    for name in names:
        top, *rest = name.split(".")
        path = None
        for entry in entries:
            package = os.path.join(entry, top)
            if os.path.isfile(os.path.join(package, "__init__.py")) or (
                    rest and os.path.isdir(package)):  # a namespace package
                path = _source(package, rest)
                break
            if not rest and os.path.isfile(package + ".py"):
                path = package + ".py"
                break
        found.append(Path(path or _source(os.path.join(docroot, top), rest)))
    return found


def _source(package: str, rest: list[str]) -> str:
    """The file of module ``rest`` inside the folder ``package``: a .py, or a package's init."""
    base = os.path.join(package, *rest)
    if rest and os.path.isfile(base + ".py"):
        return base + ".py"
    return os.path.join(base, "__init__.py")
