"""The fusion registry: names, errors, registration from another file, lazy import without cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from stbava.model.fusion import FUSION_MODULES, build_fusion, list_fusions, register_fusion, register_lazy

ROOT = Path(__file__).resolve().parents[3]
OURS = {"tpavi": "TPAVIFusion", "han": "HANFusion", "cmran": "CMRANFusion", "jca": "JCAFusion"}


def test_the_four_modules_are_registered_and_build_their_classes():
    assert set(OURS) <= set(list_fusions()) and list_fusions() == sorted(list_fusions())
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


def test_lazy_registration_imports_on_first_build(scratch_names):
    register_lazy("test-lazy", "torch.nn:Identity")
    assert "test-lazy" in list_fusions()
    assert isinstance(build_fusion("test-lazy"), nn.Identity)
    assert FUSION_MODULES["test-lazy"].__name__ == "build_test-lazy"


def _fresh(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    return res.stdout.strip()


def test_importing_the_package_registers_without_importing_the_modules():
    """The package imports none of its submodules, so no cycle is possible: importing a submodule always runs
    the package first, and the submodules import only the package. Then each submodule imports and builds."""
    out = _fresh("import importlib, sys, stbava.model.fusion as f; "
                 "print(sorted(f.FUSION_MODULES), "
                 "sorted(m for m in sys.modules if m.startswith('stbava.model.fusion.'))); "
                 f"print(all(f.build_fusion(n, grid=4).__class__ is "
                 "getattr(importlib.import_module('stbava.model.fusion.' + n), c) "
                 f"for n, c in {OURS!r}.items()))")
    assert out.splitlines() == [f"{sorted(OURS)} []", "True"]
