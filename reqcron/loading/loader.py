"""Import DOCROOT/__tasks__.py under a name unique to the DOCROOT -> registered tasks + errors."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import tzinfo
from pathlib import Path

from ..config import TASKS_FILE, path_key
from ..errors import ScheduleError
from ..paths import check_tasks_safety
from ..records import LoadError, Record
from ..task_base import TaskBase
from . import django_apps
from . import import_path as importing

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")


class Loaded(Record):
    """The outcome of one load: the tasks that registered, and what went wrong."""

    __slots__ = ("tasks", "names", "errors", "file_ok", "sources")

    def __init__(self) -> None:
        self.tasks: dict[str, TaskBase] = {}
        #: Every task name the file registers (with ``only``, not all are created).
        self.names: list[str] = []
        self.errors: list[LoadError] = []
        #: False when the file as a whole failed (syntax or import error).
        self.file_ok = True
        #: The module of ``modules`` each task came from; absent: __tasks__.py.
        self.sources: dict[str, str] = {}


TASKS_MODULE_PREFIX = "_reqcron_tasks_"


def module_name(docroot: Path) -> str:
    """Return the module name __tasks__.py is imported under, unique per DOCROOT."""
    return f"{TASKS_MODULE_PREFIX}{path_key(docroot)}"


def load_tasks(
    docroot: Path,
    zone: tzinfo | None,
    *,
    only: str | None = None,
    compile_schedules: bool = True,
    modules: Sequence[str] = (),
    django_settings: str | None = None,
) -> Loaded:
    """Import DOCROOT/__tasks__.py afresh, and ``modules``, and register their Task subclasses.

    With ``django_settings``, Django is set up first.  Each task is created
    and its schedule compiled (and so validated), unless ``compile_schedules``
    is off; with ``only``, just that task is created (a task process needs
    neither the others nor croniter for them) and the import path stays
    extended for its run.
    """
    path = docroot / TASKS_FILE
    loaded = Loaded()
    # Absent, it counts as empty where modules (or Django apps' cron.py) hold the tasks.
    missing = not path.exists()
    if missing and not (modules or django_settings):
        loaded.file_ok = False
        loaded.errors.append(LoadError(str(path), None, "the file is missing"))
        return loaded
    refusal = check_tasks_safety(docroot)
    if refusal:
        loaded.file_ok = False
        loaded.errors.append(LoadError(str(path), None, refusal))
        return loaded
    try:
        source = b"" if missing else path.read_bytes()
        # compile() ourselves: no __pycache__ in the DOCROOT, and no stale
        # bytecode when the file changes twice within one second.
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        loaded.file_ok = False
        loaded.errors.append(LoadError(str(path), exc.lineno, f"SyntaxError: {exc.msg}"))
        return loaded
    except (OSError, ValueError) as exc:
        loaded.file_ok = False
        loaded.errors.append(LoadError(str(path), None, f"cannot be read: {exc}"))
        return loaded

    # Last, so tasks can import their neighbours but a DOCROOT/json.py never
    # shadows the standard library or an installed package.
    added = importing.extend_path(docroot)
    try:
        if django_settings:
            try:
                importing.setup_django(django_settings)
                modules = [*modules, *django_apps.cron_modules(modules)]
            except (Exception, SystemExit) as exc:
                loaded.file_ok = False
                loaded.errors.append(importing.django_error(docroot, django_settings, exc))
                return loaded
        places = _import_modules(docroot, modules, loaded)
        namespace = _exec_tasks_file(docroot, code, loaded)
        if namespace is None:
            return loaded
        places.insert(0, (None, namespace))
    finally:
        if only is None:
            for entry in added:
                sys.path.remove(entry)
    _register(path, places, loaded, zone, only, compile_schedules)
    return loaded


Place = tuple[str | None, dict[str, object]]  # (module name, or None for __tasks__.py; namespace)


def _import_modules(docroot: Path, modules: Sequence[str], loaded: Loaded) -> list[Place]:
    """Import each task module; one that fails is its own error, the others load."""
    places: list[Place] = []
    for name in modules:
        try:
            module = importing.import_module(name)
        except (Exception, SystemExit) as exc:
            error = importing.module_error(docroot, name, exc)
            error.module = name
            loaded.errors.append(error)
            continue
        places.append((name, module.__dict__))
    return places


def _exec_tasks_file(docroot: Path, code: types.CodeType,
                     loaded: Loaded) -> dict[str, object] | None:
    """Run __tasks__.py's code as a fresh module; None (and a file error) when it raises."""
    path = docroot / TASKS_FILE
    name = module_name(docroot)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and pickle look classes up here
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        loaded.file_ok = False
        error = _error_at(path, exc)
        if isinstance(exc, ModuleNotFoundError) and (risk := importing.parent_risk(docroot)):
            error.message += f" (not looked for in {docroot.parent}: {risk})"
        loaded.errors.append(error)
        return None
    return module.__dict__


def _register(path: Path, places: list[Place], loaded: Loaded, zone: tzinfo | None,
              only: str | None, compile_schedules: bool) -> None:
    """Register the Task subclasses found in ``places``; each problem is one task's error."""
    found: dict[type[TaskBase], str | None] = {}  # a class bound to two names is one task
    for module, namespace in places:
        for cls in _candidates(list(namespace.values())):
            if (isinstance(cls, type) and issubclass(cls, TaskBase) and cls is not TaskBase
                    and not cls.__dict__.get("abstract", False)):
                found.setdefault(cls, module)
    by_name: dict[str, list[type[TaskBase]]] = {}
    for cls in found:
        by_name.setdefault(str(cls.name), []).append(cls)
    loaded.names = sorted(by_name)
    for task_name, group in by_name.items():
        if only is not None and task_name != only:
            continue  # a task process creates only its own task
        file = _file_of(group[-1], path)
        line = _class_line(group[0])
        if len(group) > 1:
            several = len({found[c] for c in group}) > 1  # then say where each is
            names = " and ".join(c.__qualname__ + (f" ({_place(found[c])})" if several else "")
                                 for c in group)
            loaded.errors.append(
                LoadError(file, _class_line(group[-1]), f"task name {task_name!r} is used by "
                          f"{names}", task_name)
            )
            continue
        if found[group[0]] is not None:
            loaded.sources[task_name] = str(found[group[0]])
        if not isinstance(task_name, str) or not _NAME.fullmatch(task_name):
            loaded.errors.append(
                LoadError(
                    file,
                    line,
                    f"task name {task_name!r} must be letters, digits, "
                    "'_', '.' or '-', starting with a letter or '_'",
                    str(task_name),
                )
            )
            continue
        misnamed = _misnamed_run(group[0])
        if misnamed:  # its slots would be recorded ok, doing nothing
            loaded.errors.append(LoadError(file, line, misnamed, task_name))
            continue
        try:
            task = group[0]()
            if compile_schedules:
                task.compiled_schedule(zone)
                _check_alerts(task)
        except ScheduleError as exc:
            # The line of schedule() in __init__, else of the attribute at fault.
            at = _error_at(Path(file), exc,
                           _attribute_line(Path(file), group[0], exc.problem) or line)
            loaded.errors.append(LoadError(file, at.line, str(exc), task_name))
            continue
        except Exception as exc:
            # A bad notify or ping: the line that sets it, else the class's.
            err = _error_at(Path(file), exc, default_line=_attribute_line(
                Path(file), group[0], str(exc)) or line)
            loaded.errors.append(
                LoadError(
                    err.file,
                    err.line,
                    f"task {task_name!r} cannot be created: {err.message}",
                    task_name,
                )
            )
            continue
        loaded.tasks[task_name] = task


def _place(module: str | None) -> str:
    return f"in {module}" if module else f"in {TASKS_FILE}"


def _file_of(cls: type, default: Path) -> str:
    """The file ``cls`` is defined in (a task module's), else __tasks__.py."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return file if isinstance(file, str) else str(default)


def _candidates(values: list[object]) -> Iterator[object]:
    """The module's values, and the Task class each @cron/@every function carries."""
    for value in values:
        yield value
        # Functions only: getattr() on any other value could run a proxy's code.
        if isinstance(value, types.FunctionType):
            yield value.__dict__.get("__reqcron_task__")


def _function_of(cls: type) -> Callable[..., object] | None:
    """The function a @cron/@every class runs, or None for a class statement."""
    fn = getattr(cls.__dict__.get("run"), "__wrapped__", None)
    return fn if getattr(fn, "__reqcron_task__", None) is cls else None


def _class_line(cls: type) -> int | None:
    # A function task's line is its decorator's, not that of reqcron's wrapper.
    for func in (_function_of(cls), cls.__dict__.get("__init__"), cls.__dict__.get("run")):
        code = getattr(func, "__code__", None)
        if code is not None:
            return int(code.co_firstlineno)
    return None


_ATTRIBUTES = ("cron", "every", "at", "anchor", "timeout", "grace", "stop_grace", "timezone",
               "notify", "ping")


def _attribute_line(file: Path, cls: type, problem: str) -> int | None:
    """The line where ``cls`` sets the attribute a schedule problem is about, if it does."""
    first = problem.split(" ", 1)[0]
    attr = "timezone" if problem.startswith("unknown time zone") else first
    if attr not in _ATTRIBUTES or _function_of(cls) is not None:
        return None  # a function task's attributes are its decorator's keywords
    import ast  # only on errors

    try:
        tree = ast.parse(file.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                targets = (item.targets if isinstance(item, ast.Assign)
                           else [item.target] if isinstance(item, ast.AnnAssign) else [])
                if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                    return item.lineno
    return None


def _misnamed_run(cls: type[TaskBase]) -> str | None:
    """Why a task class whose run() seems misspelt is refused (``def runn``), or None.

    A class with no run() at all stays a task that does nothing: a
    schedule-only task is how the house's examples and tests are written.
    """
    if cls.run is not TaskBase.run:
        return None
    import difflib

    defined = [n for c in cls.__mro__ if not c.__module__.startswith("reqcron.")
               for n, v in vars(c).items() if callable(v) and not n.startswith("__")]
    near = difflib.get_close_matches("run", defined, n=1, cutoff=0.6)
    if not near:
        return None
    return (f"task class {cls.__qualname__} defines {near[0]}() but no run(), so it would "
            f"do nothing; rename {near[0]}() to run()")


def _error_at(path: Path, exc: BaseException, default_line: int | None = None) -> LoadError:
    """Describe ``exc`` at the deepest line of the tasks file it passed through."""
    import traceback  # only on errors: it costs a task process 2 ms to import

    line = default_line
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    if isinstance(exc, SyntaxError) and exc.filename:
        return LoadError(exc.filename, exc.lineno, f"SyntaxError: {exc.msg}")
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return LoadError(str(path), line, message)


def _check_alerts(task: TaskBase) -> None:
    """A notify or ping that cannot be used is the task's load error, found now."""
    from ..alerts import check_callable, check_url, targets

    for target in targets(task.notify, "notify"):
        if not target.startswith(("mailto:", "http://", "https://")):
            check_callable(target)
    if task.ping is not None:
        if not isinstance(task.ping, str):
            raise ValueError(f"ping must be an http(s):// URL, not {task.ping!r}")
        check_url(task.ping, "ping")
