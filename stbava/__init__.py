"""stbava: SAM-based audio-visual segmentation with ST-BAVA, made practical.

Public API (lazy, so ``import stbava`` stays cheap): ``open_cache``, ``load_model``, ``load_config``.
"""

from __future__ import annotations

from typing import Any

from stbava.version import __version__

__all__ = ["__version__", "load_config", "load_model", "open_cache"]


def __getattr__(name: str) -> Any:
    if name == "open_cache":
        from stbava.cache import open_cache

        return open_cache
    if name == "load_model":
        from stbava.pipeline.core.restore import load_model

        return load_model
    if name == "load_config":
        from stbava.config import load_config

        return load_config
    raise AttributeError(f"module 'stbava' has no attribute {name!r}")
