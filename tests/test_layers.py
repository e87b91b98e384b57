"""The package's shape: no import cycle (a lower layer never imports a higher one, not even inside a
function: a lazy import hides a cycle from Python, not from a reader), and no function over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reviveformer"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its text (`from pkg import mod` names the module
    when `mod` is one, else the package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.startswith("reviveformer")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("reviveformer")
            ):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in modules else known(node.module))
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_a_lazy_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # the command line imports its commands only inside a function (each command imports what it needs)
    assert "reviveformer.commands" in graph["reviveformer.cli"]
    assert "reviveformer.liveness.options" in graph["reviveformer.config.schema"]
    assert not any(m.startswith("reviveformer.config") for m in graph["reviveformer.liveness.monitor"])


def test_no_import_cycle_in_the_package() -> None:
    assert cycles(import_graph()) == []


MAX_FUNCTION_LINES = 60  # the rooms' limit (issue 26); a page template that must be longer is named here
LONGER_PAGE_TEMPLATES: set[str] = set()


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`module:function (lines)` for every function or method of the package longer than `limit` lines."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                name = f"{_module_name(path)}:{node.name}"
                if lines > limit and name not in LONGER_PAGE_TEMPLATES:
                    found.append(f"{name} ({lines})")
    return found


def test_the_length_check_sees_a_long_function(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "reviveformer"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (pkg / "long.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    assert long_functions() == ["reviveformer.long:long (71)"]


def test_no_function_over_the_limit() -> None:
    assert long_functions() == []
