"""Where a deferred call's function may come from, checked before anything is imported.

A queued call names a module, a function and the caller's import path.  The
row is data, and whoever can write the state can write it: importing what
it names runs that module's code as the server's user.  So before any
import, the module is found (``find_spec``, which executes nothing) on this
host's own path (the interpreter's, then the DOCROOT's) plus those of the
caller's entries that exist here and that no other user can write
(``paths.folder_risk``), and its source must mark the function with
``@delay``.  Only then is it imported; the drainer then checks the object
itself.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys

from ..paths import docroot_owner, folder_risk
from .import_path import extend_path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from importlib.machinery import ModuleSpec
    from pathlib import Path


def vet(docroot: Path, target: str, caller_path: Iterable[str]) -> str | None:
    """Make ``target``'s module findable; return why it must not be imported, or None.

    ``target`` is ``module:qualname``.  The caller's entries that are safe
    are appended to ``sys.path`` (after the host's own: never shadowing).
    """
    module, _, qualname = target.partition(":")
    extend_path(docroot)
    unsafe: list[tuple[str, str]] = []
    trusted = docroot_owner(docroot)
    for entry in caller_path:
        if not isinstance(entry, str) or not os.path.isabs(entry) or entry in sys.path:
            continue
        if not os.path.isdir(entry):
            continue  # the caller's, not this host's: nothing to find there
        risk = folder_risk(entry, trusted)
        if risk is None:
            sys.path.append(entry)
        else:
            unsafe.append((entry, risk))
    spec = find(module)
    if spec is None:
        top = module.partition(".")[0]
        for entry, risk in unsafe:
            if importlib.machinery.PathFinder.find_spec(top, [entry]) is not None:
                return (f"{target}: its module is only in {entry}, which another user can "
                        f"change ({risk}); nothing is imported from there")
        return f"{target}: no module {module!r} on this host's import path"
    try:
        source = spec.loader.get_source(spec.name)  # type: ignore[union-attr]
    except (ImportError, OSError, AttributeError):  # no loader, or one that keeps no source
        source = None
    if not isinstance(source, str):
        return f"{target}: module {module!r} has no source to check for @delay"
    if not marks_delay(source, qualname):
        return f"{target} is not a function marked with @delay"
    return None


def find(module: str) -> ModuleSpec | None:
    """The spec of ``module``, found as the import system would, without running any of it.

    A package's submodules are looked for in the package's folders, not in
    the ``__path__`` its ``__init__`` might set: it has not run.
    """
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    for i in range(1, len(parts)):
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]),
                                                        list(locations))
    return spec


def marks_delay(source: str, qualname: str) -> bool:
    """Whether ``source`` defines ``qualname`` marked with ``@delay`` (any spelling of it).

    ``@delay``, ``@delay(...)``, ``@reqcron.delay``, an alias imported from
    reqcron, or ``name = delay(...)(function)`` / ``name = delay(function)``.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    names = {"delay"} | {alias.asname for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                             "reqcron")
                         for alias in node.names if alias.name == "delay" and alias.asname}
    body: list[ast.stmt] = tree.body
    *outer, last = qualname.split(".")
    for part in outer:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == part]
        if not found:
            return False
        body = found[-1].body
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == last:
            if any(_is_delay(d, names) for d in node.decorator_list):
                return True
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == last for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and _is_delay(value.func, names):
                return True
    return False


def _is_delay(node: ast.expr, names: set[str]) -> bool:
    """``delay``, ``x.delay``, or a call of one of them (``delay(minutes=5)``)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Attribute) and node.attr == "delay"
