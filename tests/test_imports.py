"""Every module of the package imports, the modules' import graph has no cycle, and no module
grows back into a 1,200-line one.

The graph is read from the source (ast), not from what happened to be imported: every
`import autotune...` / `from autotune... import ...` statement counts, at module level and inside
functions alike, since each of them is a dependency that a cycle can run through (a lazy one only
hides it until the function runs). Imports under `if TYPE_CHECKING:` are not edges: they never run,
and a dependency for annotations only is not an import cycle. Edges follow what Python
does: importing `a.b.c` runs the packages `a` and `a.b` first; `from a.b import name` imports
the submodule `a.b.name` when there is one. A package whose `__init__` re-exports names lazily
(a `_EXPORTS` table of name -> submodule, PEP 562) imports the submodule only for the names asked.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import autotune

ROOT = Path(autotune.__file__).parent
MAX_MODULE_LINES = 600  # the guard against a new study.py (1,212 lines before it was split)


def _modules() -> dict[str, Path]:
    found = {"autotune": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="autotune."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = Path(spec.origin)
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _lazy_exports(package: str) -> dict[str, str]:
    """The package's `_EXPORTS` table (name -> submodule), read from its source."""
    for node in ast.parse(MODULES[package].read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _with_parents(name: str, importer: str) -> set[str]:
    """`name` and the packages Python runs before it, except those the importer is inside of (they
    are already being imported when the importer runs)."""
    parts = name.split(".")
    out = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in out if m in MODULES and m != "autotune" and not (importer + ".").startswith(m + ".")}


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return set().union(*(_with_parents(alias.name, importer) for alias in node.names if alias.name.startswith("autotune")))
    if node.level:  # relative: resolved against the importer's package
        base = importer if _is_package(importer) else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        module = f"{base}.{node.module}" if node.module else base
    else:
        module = node.module or ""
    if not module.startswith("autotune"):
        return set()
    out = _with_parents(module, importer)
    if _is_package(module):
        exports = _lazy_exports(module)
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            if sub in MODULES:
                out |= _with_parents(sub, importer)
            elif alias.name in exports:
                out |= _with_parents(f"{module}.{exports[alias.name]}", importer)
    return out - {importer}


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them except those in an `if TYPE_CHECKING:`
    body (its `else:` branch does run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            edges |= _targets(name, node)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module: every cycle lies in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_imports() -> None:
    for name in MODULES:
        importlib.import_module(name)


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert graph["autotune.report"] >= {"autotune.study", "autotune.study.results"}  # the graph sees real edges
    assert "autotune.study.loop" in graph["autotune.cli"]  # through the lazy re-export of run_study
    components = cycles(graph)
    messages = ["import cycle: " + " -> ".join(find_cycle({m: graph[m] & c for m in c})) for c in components]
    assert not components, "\n".join(messages)


def test_type_checking_imports_are_not_edges_and_lazy_ones_are() -> None:
    source = """
from typing import TYPE_CHECKING
import typing
if TYPE_CHECKING:
    import autotune.spec
if typing.TYPE_CHECKING:
    import autotune.models
else:
    import autotune.knobs
def f():
    import autotune.samplers
"""
    assert sorted(alias.name for node in _imports(ast.parse(source)) for alias in node.names) == [
        "TYPE_CHECKING", "autotune.knobs", "autotune.samplers", "typing"]
    graph = import_graph()
    assert "autotune.spec" not in graph["autotune.knobs"]  # knobs names Candidate for annotations only
    assert "autotune.samplers" in graph["autotune.spec"]  # TuneSpec's sampler validator, at call time


def test_find_cycle_reports_the_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert cycles(graph) == [{"a", "b", "c"}]
    assert find_cycle({"a": {"b"}, "b": set()}) is None and cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_a_monolith() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    largest = max(sizes, key=sizes.get)
    print(f"largest module: {largest}, {sizes[largest]} lines")
    assert sizes[largest] < MAX_MODULE_LINES, f"{largest} has {sizes[largest]} lines; split it by job"
