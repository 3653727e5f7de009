"""Imports inside ``stbava.cache`` go one way: no cycle, counting lazy imports too.

Every import statement counts, wherever it is (module top, inside a function, under TYPE_CHECKING), and so
does any string naming a package module (what ``importlib.import_module`` is given), so a cycle cannot hide
behind a function-level import or a name looked up at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "stbava" / "cache"


def _target(dotted: str, name: str, modules: set[str]) -> str | None:
    """The package module that the dotted name ``dotted`` is (or lies in), ``__init__`` for the package."""
    head = dotted[len(name) + 1:].split(".")[0] if dotted.startswith(name + ".") else None
    if head in modules:
        return head
    return "__init__" if dotted == name else None


def _imported(node: ast.AST, name: str, modules: set[str]) -> set[str]:
    """Package modules one AST node imports (or names as a string, as ``importlib`` is given them)."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the package
            base = name + (f".{base}" if base else "")
        if base == name:  # ``from pkg import x``: x may be a submodule, else it comes from __init__
            return {a.name if a.name in modules else "__init__" for a in node.names}
        return {t} if (t := _target(base, name, modules)) else set()
    if isinstance(node, ast.Import):
        return {t for a in node.names if (t := _target(a.name, name, modules))}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {t} if (t := _target(node.value.split(":")[0], name, modules)) not in (None, "__init__") else set()
    return set()


def module_edges(pkg: Path, name: str) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` for the package ``name`` in folder ``pkg``."""
    modules = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for mod in modules:
        tree = ast.parse((pkg / f"{mod}.py").read_text())
        graph[mod] = set().union(*(_imported(n, name, modules) for n in ast.walk(tree))) - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cache_package_imports_have_no_cycle():
    graph = module_edges(PKG, "stbava.cache")
    assert {"writer", "shards", "create", "lock", "base"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    # the one-way chain the restructuring is about
    assert "writer" in graph["shards"] and "shards" in graph["create"] and "writer" in graph["create"]
    assert "zarr_backend" in graph["base"]  # the registry's by-name import is seen ...
    assert "base" not in graph["zarr_backend"] and "base" not in graph["hdf5_backend"]  # ... so backends stay leaves


def test_checker_sees_cycles_hidden_in_functions_and_strings(tmp_path):
    """The checker itself: the two kinds of hidden cycle this package used to have are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import g\n")  # lazy import back
    (pkg / "c.py").write_text("import importlib\nM = ('pkg.d', 'D')\n")
    (pkg / "d.py").write_text("from pkg import c\n")  # c loads d by name, d imports c
    (pkg / "e.py").write_text("from . import a\n")
    graph = module_edges(pkg, "pkg")
    assert graph["a"] == {"b"} and graph["b"] == {"a"} and graph["c"] == {"d"} and graph["d"] == {"c"}
    assert graph["e"] == {"a"}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    del graph["b"]
    assert find_cycle(graph) == ["c", "d", "c"]
    graph["c"] = set()
    assert find_cycle(graph) is None
