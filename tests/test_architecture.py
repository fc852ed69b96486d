"""The package's shape: no import cycles, small modules, a typed distribution."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "moe_agents"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _typing_only(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:`` (annotations only: never imported at run time)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def _import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside functions, plus the
    sub-package ``__init__``s those imports run (the root package's excepted)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text("utf-8"))
        skip = _typing_only(tree)
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join([*prefix, *([node.module] if node.module else [])])
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names
                ]
            for target in targets:
                found = owner(target) if target.startswith("moe_agents") else None
                if found is None or found == name:
                    continue
                graph[name].add(found)
                parts = found.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in modules and not name.startswith(parent + "."):
                        graph[name].add(parent)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


class TestShape:
    def test_no_import_cycles(self) -> None:
        """No two package modules import each other, directly or through others (function-level
        imports and sub-package __init__s count; TYPE_CHECKING imports do not)."""
        assert _cycles(_import_graph()) == []

    def test_the_cycle_finder_finds_cycles(self) -> None:
        """The check can fail: a made-up graph with a cycle is reported."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert _cycles(graph) == [["a", "b", "c"]]

    def test_no_module_is_over_500_lines(self) -> None:
        """Every module stays small enough to read in one sitting."""
        sizes = {name: len(path.read_text("utf-8").splitlines()) for name, path in _modules().items()}
        assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}

    def test_the_package_is_typed(self) -> None:
        """py.typed ships, so users' type checkers read the annotations."""
        assert (PACKAGE / "py.typed").is_file()
