"""The fusion registry: names, errors, registration from another file, registration on package import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from stbava.config import FUSIONS
from stbava.model.fusion import FUSION_MODULES, build_fusion, list_fusions, register_fusion

ROOT = Path(__file__).resolve().parents[3]
OURS = {"tpavi": "TPAVIFusion", "han": "HANFusion", "cmran": "CMRANFusion", "jca": "JCAFusion",
        "stbava": "STBAVAFusion", "none": "NoFusion"}


def test_the_six_modules_are_registered_and_build_their_classes():
    assert set(OURS) == set(list_fusions()) and list_fusions() == sorted(list_fusions())
    assert set(FUSIONS) == set(OURS)  # the config's list of names (a leaf, it cannot ask the registry)
    for name, cls in OURS.items():
        m = build_fusion(name, embed_dim=32, grid=4, **({"frames": 2} if name == "jca" else {}))
        assert type(m).__name__ == cls and type(m).__module__ == f"stbava.model.fusion.{name}"


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown fusion module 'bava2'") as err:
        build_fusion("bava2")
    for name in OURS:
        assert name in str(err.value)


@pytest.fixture
def scratch_names():
    """Names registered by a test are removed afterwards, so the registry stays as imported."""
    before = set(FUSION_MODULES)
    yield
    for name in set(FUSION_MODULES) - before:
        del FUSION_MODULES[name]


class _Plain(nn.Module):
    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.embed_dim, self.scale = embed_dim, scale


def test_another_file_can_register_a_class_and_duplicates_fail(scratch_names):
    assert register_fusion("test-plain")(_Plain) is _Plain  # the decorator returns the class unchanged
    m = build_fusion("test-plain", embed_dim=8, scale=2.0)
    assert isinstance(m, _Plain) and (m.embed_dim, m.scale) == (8, 2.0)
    with pytest.raises(ValueError, match="already registered"):
        register_fusion("test-plain")(_Plain)
    with pytest.raises(ValueError, match="already registered"):
        register_fusion("tpavi")(_Plain)


def _fresh(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    return res.stdout.strip()


def test_importing_the_package_registers_every_module_and_the_registry_alone_imports_none():
    """The package imports the registry and then each module file (each registers itself on import); the
    registry imports no module file, so module files can import it without a cycle."""
    out = _fresh("import sys, stbava.model.fusion as f; "
                 "print(sorted(f.FUSION_MODULES)); "
                 "print(sorted(m for m in sys.modules if m.startswith('stbava.model.fusion.'))); "
                 "print(all(type(f.build_fusion(n, grid=4, **({'frames': 2} if n == 'jca' else {}))).__name__ == c "
                 f"for n, c in {OURS!r}.items()))")
    modules = sorted(f"stbava.model.fusion.{n}" for n in [*OURS, "registry"])
    assert out.splitlines() == [str(sorted(OURS)), str(modules), "True"]
    registry = (ROOT / "stbava/model/fusion/registry.py").read_text()
    assert "import stbava.model.fusion." not in registry and "from stbava.model.fusion." not in registry
