"""Import ``segment_anything`` and ``torchvggish`` model code without their package ``__init__``.

Why: ``segment_anything/__init__.py`` imports its predictor, which needs torchvision (no CPU build pairs
with our pinned torch), and ``torchvggish/__init__.py`` imports soundfile/resampy-based input code. The
model submodules themselves need only torch and numpy. We register an empty package object for each
(without executing its ``__init__``) and then import the submodules normally. This is the one place that
does this; everything else imports from here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType


def _bare_package(name: str) -> None:
    mod = sys.modules.get(name)
    if mod is not None and hasattr(mod, "__path__"):
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"package '{name}' is not installed; run `make setup`")
    sys.modules[name] = importlib.util.module_from_spec(spec)


def sam_modeling() -> ModuleType:
    """``segment_anything.modeling`` (ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer, Sam)."""
    _bare_package("segment_anything")
    return importlib.import_module("segment_anything.modeling")


def sam_build() -> ModuleType:
    """``segment_anything.build_sam`` (``sam_model_registry``)."""
    _bare_package("segment_anything")
    return importlib.import_module("segment_anything.build_sam")


def vggish_model() -> ModuleType:
    """``torchvggish.torchvggish`` (``VGG``, ``make_layers``, ``Postprocessor``)."""
    _bare_package("torchvggish")
    return importlib.import_module("torchvggish.torchvggish")


def vggish_mel() -> tuple[ModuleType, ModuleType]:
    """``(torchvggish.mel_features, torchvggish.vggish_params)``: numpy log-mel code and constants."""
    _bare_package("torchvggish")
    return (importlib.import_module("torchvggish.mel_features"),
            importlib.import_module("torchvggish.vggish_params"))


# SAM's state-dict name of the random-Fourier PE matrix its mask decoder was trained with (REFERENCE §9.2).
SAM_PE_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def distribution_version(name: str) -> str | None:
    """Installed version of distribution ``name`` (None when not installed)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def sam2_module(name: str) -> ModuleType:
    """A ``sam2`` submodule, e.g. ``sam2_module("build_sam")`` or ``"modeling.sam.mask_decoder"``.

    Imported on first use only, so SAM-only runs never load ``sam2`` (nor hydra, which ``sam2/__init__``
    initialises with the package's own config module; ``build_sam2`` reads its configs from there).
    """
    if importlib.util.find_spec("sam2") is None:
        raise ImportError("package 'sam2' is not installed; run `make setup` (SAM 2 backbones need it)")
    return importlib.import_module(f"sam2.{name}")
