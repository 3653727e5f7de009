"""Pluggable audio-visual fusion modules for SAM's mask decoder (thesis §6.4, Table 6.2).

The contract and the registry are in :mod:`stbava.model.fusion.registry`. Importing this package imports
every module file below, each of which registers itself there, so ``build_fusion("han")`` works after
``import stbava.model.fusion`` and the imports are plain and visible (no lazy strings).
"""

from stbava.model.fusion import cmran, han, jca, none, stbava, tpavi  # noqa: F401 (each registers itself)
from stbava.model.fusion.registry import (
                                          FUSION_MODULES,
                                          FusionOutput,
                                          FusionPrompts,
                                          build_fusion,
                                          list_fusions,
                                          register_fusion,
)

__all__ = ["FUSION_MODULES", "FusionOutput", "FusionPrompts", "build_fusion", "list_fusions", "register_fusion"]
