"""The package's shape: no import cycle between modules or between layers, small modules.

Imports are read from the source (function-local ones included; those under
``if TYPE_CHECKING:`` are for the type checker only and do not count), so a
cycle fails here before it can bite at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reqcron"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                for statement in child.orelse:
                    visit_one(statement)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        visit(node)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at run time."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in files)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in files else module)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def layer_of(module: str) -> str:
    """``reqcron.engine.docroot`` -> ``engine``; a top-level module is a layer of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph()) == []


def test_no_layer_imports_itself_back_through_others():
    layers: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        layers.setdefault(layer_of(module), set()).update(
            layer_of(t) for t in targets if layer_of(t) != layer_of(module))
    assert cycles(layers) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_store_imports_a_database_driver_and_only_the_page_webob():
    owners = {"psycopg": {"reqcron.store.postgres_conn"}, "webob": {"reqcron.web.status"},
              "croniter": {"reqcron.schedule.forms"}, "watchdog": {"reqcron.web.watch"}}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for node in runtime_imports(ast.parse(path.read_text())):
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if not node.level else [])
            for library, allowed in owners.items():
                if any(i == library or i.startswith(library + ".") for i in imported):
                    assert name in allowed, f"{name} imports {library}"


def test_no_surface_reaches_into_a_store():
    """The web and command surfaces go through the engine (Docroot), never its store."""
    surfaces = [*(PACKAGE / "web").glob("*.py"), *(PACKAGE / "cli").glob("*.py"),
                PACKAGE / "report.py", PACKAGE / "run" / "spawn.py"]
    for path in surfaces:
        reaching = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Attribute) and node.attr in ("store", "_store")]
        assert reaching == [], f"{module_name(path)} reaches into a store at lines {reaching}"


#: The layers, lowest first, as README's package map shows them: a module may
#: import from its own layer and the ones before it, never from a later one.
LAYERS = [
    {"errors", "records", "limits", "logonce", "paths", "times"},
    {"schedule"},
    {"config", "alerts"},
    {"task_base"},
    {"loading"},
    {"store"},
    {"engine"},
    {"run"},
    {"calls"},
    {"task", "functions", "marks", "report"},
    {"web"},
    {"cli", "asgi", "runtask", "__main__", "reqcron", "contrib"},
]


def test_each_layer_imports_only_from_itself_and_the_layers_below():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if rank[layer_of(target)] > rank[layer_of(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_layer_has_its_place():
    placed = {name for layer in LAYERS for name in layer}
    assert {layer_of(m) for m in import_graph()} <= placed


def test_no_module_is_over_the_line_limit():
    # One job a module: past MAX_LINES it is doing two (split it, as run/stopping.py was).
    long = {module_name(path): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
