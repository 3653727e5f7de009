"""Data flows one way: lower layers never import higher ones (checked on the import statements)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "stbava"

# layer -> stbava subpackages/modules it must not import
FORBIDDEN = {
    "config": {"data", "encoders", "cache", "model", "pipeline", "cli"},
    "data": {"encoders", "cache", "model", "pipeline", "cli"},
    "encoders": {"cache", "model", "pipeline", "cli"},
    "cache": {"encoders", "model", "pipeline", "cli"},
    "atomic": {"config", "data", "encoders", "cache", "model", "pipeline", "cli"},
    "model": {"cache", "pipeline", "cli", "data"},
    "metrics": {"cache", "model", "pipeline", "cli", "encoders", "data"},
    "pipeline": {"cli"},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stbava."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("stbava."))
    return out


def test_layers_import_only_downwards():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        files = list((PKG / layer).rglob("*.py")) if (PKG / layer).is_dir() else [PKG / f"{layer}.py"]
        for f in files:
            hit = _imports(f) & forbidden
            if hit:
                bad.append(f"{f.relative_to(PKG)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)
