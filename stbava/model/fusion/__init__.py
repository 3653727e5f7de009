"""Pluggable audio-visual fusion modules for SAM's mask decoder: one contract and a name registry.

Thesis §6.4 compares ST-BAVA with four published fusion modules inserted between the frozen encoders and
SAM's mask decoder (TPAVI, HAN, CMRAN, JCA; REFERENCE §11). Every module here implements one contract, so
the model, the config and the CLI can swap them by name::

    class SomeFusion(nn.Module):
        def __init__(self, *, embed_dim=256, audio_dim=128, grid=64, **module_options): ...
        def forward(self, image, audio) -> FusionPrompts: ...

- ``image``: ``[B,T,C,h,w]`` SAM image embeddings E (C = embed_dim, h = w = grid);
  ``audio``: ``[B,T,audio_dim]`` raw VGGish vectors (each module owns its audio projection).
- ``FusionPrompts.dense`` ``[B,T,C,h,w]`` is the whole visual ``src`` the mask decoder sees (it is called
  with a zero image embedding and ``dense`` as the dense prompt, REFERENCE §5), so it is E plus the module's
  update, as ST-BAVA's ``E + V``. ``FusionPrompts.sparse`` ``[B,T,2,C]`` holds the two audio-derived
  sparse tokens per frame (ST-BAVA passes its fused audio token twice).
- Clips never mix: the outputs of clip b depend only on clip b. Frames of one clip may interact.

The registry follows SAM's ``sam_model_registry`` (a name -> builder dict) and timm's ``create_model`` /
``list_models``. Builders of the modules in this package are registered lazily (the submodule is imported on
first build), so importing the package registers them without importing them, and the submodules can import
this file without an import cycle. Another file adds a name with ``@register_fusion("name")`` on its class
or builder, or, to have it listed without importing it, with ``register_lazy("name", "module:attr")``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import nn

FusionBuilder = Callable[..., nn.Module]
BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])

FUSION_MODULES: dict[str, FusionBuilder] = {}


class FusionPrompts(NamedTuple):
    """What a fusion module hands to SAM's mask decoder.

    dense: ``[B,T,C,h,w]`` the visual src (image embedding plus the module's update).
    sparse: ``[B,T,2,C]`` two audio-derived prompt tokens per frame.
    """

    dense: torch.Tensor
    sparse: torch.Tensor


def register_fusion(name: str) -> Callable[[BuilderT], BuilderT]:
    """Decorator: register a fusion class (or any builder returning one) under ``name``.

    Raises:
        ValueError: ``name`` is already registered (two modules silently sharing a name would make a
            config mean different models depending on import order).
    """

    def deco(builder: BuilderT) -> BuilderT:
        if name in FUSION_MODULES:
            raise ValueError(f"fusion module {name!r} is already registered ({FUSION_MODULES[name]!r})")
        FUSION_MODULES[name] = builder
        return builder

    return deco


def register_lazy(name: str, target: str) -> None:
    """Register ``"package.module:attr"`` under ``name``; the module is imported on the first build."""
    module, attr = target.split(":")

    def build(**kwargs: object) -> nn.Module:
        return getattr(importlib.import_module(module), attr)(**kwargs)

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"Build ``{target}`` (imported on first use)."
    register_fusion(name)(build)


def list_fusions() -> list[str]:
    """Registered fusion names, sorted."""
    return sorted(FUSION_MODULES)


def build_fusion(name: str, **kwargs: object) -> nn.Module:
    """Build the fusion module registered as ``name`` with constructor keywords ``kwargs``.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    try:
        builder = FUSION_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown fusion module {name!r}; registered: {', '.join(list_fusions())}") from None
    return builder(**kwargs)


def check_inputs(image: torch.Tensor, audio: torch.Tensor, *, embed_dim: int, audio_dim: int, grid: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the contract's input shapes and cast to the module dtype (cached embeddings are float16).

    Args:
        image: ``[B,T,embed_dim,grid,grid]``; audio: ``[B,T,audio_dim]``.

    Returns:
        ``(image, audio)`` in ``dtype``.
    """
    want = (embed_dim, grid, grid)
    if image.ndim != 5 or tuple(image.shape[2:]) != want:
        raise ValueError(f"image embeddings must be [B,T,{embed_dim},{grid},{grid}], "
                         f"got {tuple(image.shape)}")
    if tuple(audio.shape) != (*image.shape[:2], audio_dim):
        b, t = image.shape[:2]
        raise ValueError(f"audio must be [B,T,{audio_dim}] = [{b},{t},{audio_dim}], "
                         f"got {tuple(audio.shape)}")
    return image.to(dtype), audio.to(dtype)


def token_pair(token: torch.Tensor) -> torch.Tensor:
    """``[B,T,C]`` -> ``[B,T,2,C]``: the token twice, ST-BAVA's sparse-prompt convention (REFERENCE §5)."""
    return token.unsqueeze(2).expand(-1, -1, 2, -1)


for _name, _target in {"tpavi": "tpavi:TPAVIFusion", "han": "han:HANFusion", "cmran": "cmran:CMRANFusion",
                       "jca": "jca:JCAFusion"}.items():
    register_lazy(_name, f"{__name__}.{_target}")
del _name, _target
