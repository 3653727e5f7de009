"""Data flows one way (data -> encoders -> cache -> fusion training -> eval/predict), and so do imports.

Checked on every import statement of every module of the package, lazy (function-level) imports included:
Strings that name a module (``importlib.import_module("stbava.x")``, lazy registries) count as imports too.
1. every module belongs to a unit of the table below (a new module must be placed, or this test fails);
2. a unit imports only the units it is allowed to;
3. the module import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "stbava"

LEAVES = {"version", "atomic", "digest", "config", "thirdparty", "state_dict", "provenance", "device", "bf16", "metrics",
          "losses", "feature_levels", "metrics_semantic"}
BELOW_PIPELINE = LEAVES | {"data", "encoders", "cache", "model", "checkpoint", "viz"}
# pipeline/ is one room per job; each sub-package is its own unit
PIPELINE = {"pipeline.core", "pipeline.extract", "pipeline.evaluate", "pipeline.train", "pipeline.predict",
            "pipeline.experiment", "pipeline.demo"}
# unit -> the units it may import (besides itself). Leaves import only other leaves.
ALLOWED: dict[str, set[str]] = {
    **{leaf: LEAVES for leaf in LEAVES},
    "data": LEAVES,
    "encoders": LEAVES,
    "cache": LEAVES,
    "model": LEAVES,  # tensors only: never data, encoders or the cache
    "checkpoint": LEAVES,
    "viz": LEAVES,
    "pipeline": set(),  # the package docstring only
    "pipeline.core": BELOW_PIPELINE,
    "pipeline.extract": BELOW_PIPELINE | {"pipeline.core"},
    "pipeline.evaluate": BELOW_PIPELINE | {"pipeline.core"},
    "pipeline.train": BELOW_PIPELINE | {"pipeline.core", "pipeline.evaluate"},
    "pipeline.predict": BELOW_PIPELINE | {"pipeline.core"},
    "pipeline.experiment": BELOW_PIPELINE | {"pipeline.core", "pipeline.evaluate", "pipeline.train"},
    "pipeline.demo": BELOW_PIPELINE | {"pipeline.core", "pipeline.extract", "pipeline.evaluate", "pipeline.train"},
    "zero_shot": BELOW_PIPELINE | {"pipeline.core", "pipeline.evaluate", "pipeline.train"},
    "testing": LEAVES | {"encoders"},
    "cli": BELOW_PIPELINE | PIPELINE | {"zero_shot"},
    "docs": {"cli"},
    "__init__": LEAVES | {"cache", "pipeline.core"},  # the lazy public API
    "__main__": {"cli"},
}


def _modules() -> dict[str, Path]:
    """Dotted name (``stbava.pipeline.train.loop``; packages by their own name) -> file."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = ("stbava", *f.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    """``stbava.model.bava`` -> ``model``; ``stbava.pipeline.train.loop`` -> ``pipeline.train``; ``stbava`` ->
    ``__init__``."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "pipeline":
        return f"pipeline.{parts[2]}"
    return parts[1] if len(parts) > 1 else "__init__"


def _targets(node: ast.AST) -> list[str]:
    """The stbava modules a node loads: ``from stbava.x import y`` -> ``stbava.x.y`` if a module, else
    ``stbava.x``; a string naming a module (what ``importlib.import_module`` is given, ``"stbava.x:attr"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        name = node.value.split(":")[0]
        return [name] if name != "stbava" and name in MODULES else []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "stbava"]
    if not isinstance(node, ast.ImportFrom):
        return []
    assert node.level == 0, "relative imports are not used in stbava"
    if not node.module or node.module.split(".")[0] != "stbava":
        return []
    out = []
    for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.append(sub if sub in MODULES else node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, f in MODULES.items():
        deps = {t for node in ast.walk(ast.parse(f.read_text())) for t in _targets(node)}
        unknown = deps - set(MODULES)
        assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
        graph[name] = deps - {name}
    return graph


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if _unit(m) not in ALLOWED)
    assert not unplaced, f"place these modules in tests/test_layering.py ALLOWED: {unplaced}"


def test_layers_import_only_downwards():
    bad = []
    for name, deps in import_graph().items():
        unit = _unit(name)
        for d in sorted(deps):
            if _unit(d) != unit and _unit(d) not in ALLOWED.get(unit, set()):
                bad.append(f"{name} imports {d}")
    assert not bad, "\n".join(bad)


def test_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_root_imports():
    """The graph must contain edges that only a function-level or ``from stbava import X`` import creates."""
    graph = import_graph()
    assert "stbava.pipeline.core.restore" in graph["stbava"]  # lazy, inside stbava.__getattr__
    assert "stbava.thirdparty" in graph["stbava.testing"]  # ``from stbava import thirdparty``
    assert "stbava.cli" in graph["stbava.docs"]


def test_pipeline_is_one_room_per_job():
    """Every module of pipeline/ sits in a job's sub-package (or is the demo), each with its docstring."""
    units = {_unit(m) for m in MODULES if m.startswith("stbava.pipeline.")}
    assert units == PIPELINE
    for sub in PIPELINE - {"pipeline.demo"}:
        doc = ast.get_docstring(ast.parse((PKG / sub.replace(".", "/") / "__init__.py").read_text()))
        assert doc and "Imports" in doc, f"stbava/{sub.replace('.', '/')}/__init__.py: say what it owns and imports"
