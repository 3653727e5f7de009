"""The fusion contract, the name registry and helpers shared by the fusion modules.

Thesis §6.4 compares ST-BAVA with four published fusion modules inserted between the frozen encoders and
SAM's mask decoder (TPAVI, HAN, CMRAN, JCA; REFERENCE §11), and with no module at all (the decoder-only
"SAM baseline"). Every module implements one contract, so the model, the config and the CLI swap them by
name::

    @register_fusion("some")
    class SomeFusion(nn.Module):
        def __init__(self, *, embed_dim=256, audio_dim=128, grid=64, **module_options): ...
        def forward(self, image, audio, image_pe=None) -> FusionPrompts: ...

- ``image``: ``[B,T,C,h,w]`` SAM image embeddings E (C = embed_dim, h = w = grid);
  ``audio``: ``[B,T,audio_dim]`` raw VGGish vectors (each module owns its audio projection);
  ``image_pe``: ``[1,C,h,w]`` SAM's dense positional encoding, the one the mask decoder gets (ST-BAVA uses
  it as its visual PE, REFERENCE §4; the published modules have none and ignore it).
- ``FusionPrompts.dense`` ``[B,T,C,h,w]`` is the whole visual ``src`` the mask decoder sees (it is called
  with a zero image embedding and ``dense`` as the dense prompt, REFERENCE §5), so it is E plus the module's
  update, as ST-BAVA's ``E + V``. ``FusionPrompts.sparse`` ``[B,T,2,C]`` holds the two audio-derived
  sparse tokens per frame (ST-BAVA passes its fused audio token twice).
- Clips never mix: the outputs of clip b depend only on clip b. Frames of one clip may interact.

Optional parts of the contract (:class:`stbava.model.avs_model.AVSModel` looks for them):

- ``flat_state_dict = True`` (class attribute): the module's sub-modules sit at the top of the model's state
  dict instead of under ``fusion.``. Only ST-BAVA and ``none`` use it, so that the published ``Decoder``
  layout (``audio_embed_layer.*``, ``layers.*``, REFERENCE §9.2) and every earlier stbava checkpoint load
  unchanged. Such a module must hold no parameters or buffers of its own (only in sub-modules).
- ``center_audio(mean_audio [audio_dim])``: the stage-two data-dependent init of an L2-normalised audio
  projection (see ``AVSModel.center_audio_projection``).
- ``fuse(image, audio, image_pe) -> FusionOutput``: features before/after fusion for the similarity figure.

The registry follows SAM's ``sam_model_registry`` (a name -> builder dict) and timm's ``create_model`` /
``list_models``. Each module file imports this file and registers itself with ``@register_fusion``; the
package ``stbava.model.fusion`` imports this file and then every module file, so importing the package
registers all of them, and the import graph (registry <- modules <- package) has no cycle.
"""

from __future__ import annotations

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


class FusionOutput(NamedTuple):
    """Features before and after fusion (the similarity figure, thesis Fig 6.2), from ``fuse``.

    V0, V: ``[B,T,HW,C]`` visual tokens (SAM embedding; fused visual update).
    A0, A: ``[B,T,C]`` audio (the module's initial audio token; the fused sparse token).
    """

    V0: torch.Tensor
    A0: torch.Tensor
    V: torch.Tensor
    A: torch.Tensor


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
        raise ValueError(f"image embeddings must be [B,T,{embed_dim},{grid},{grid}], got {tuple(image.shape)} "
                         "(embeddings of another encoder than this model's?)")
    if tuple(audio.shape) != (*image.shape[:2], audio_dim):
        b, t = image.shape[:2]
        raise ValueError(f"audio embeddings must be [B,T,{audio_dim}] = [{b},{t},{audio_dim}], "
                         f"got {tuple(audio.shape)}")
    return image.to(dtype), audio.to(dtype)


def map_tokens(module: nn.Module, image: torch.Tensor, audio: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`check_inputs` against ``module``'s sizes, plus the map as tokens ``[B,T,HW,C]``."""
    image, audio = check_inputs(image, audio, embed_dim=module.embed_dim, audio_dim=module.audio_dim,
                                grid=module.grid, dtype=dtype)
    return image, audio, image.flatten(3).transpose(2, 3)


def token_pair(token: torch.Tensor) -> torch.Tensor:
    """``[B,T,C]`` -> ``[B,T,2,C]``: the token twice, ST-BAVA's sparse-prompt convention (REFERENCE §5)."""
    return token.unsqueeze(2).expand(-1, -1, 2, -1)


@torch.no_grad()
def center_projection(layer: nn.Linear, mean_audio: torch.Tensor) -> None:
    """Fold "subtract ``mean_audio`` from the input" into ``layer``'s bias: ``W (x - mean) + b``.

    Args:
        layer: the audio projection ``Linear(audio_dim, C)``.
        mean_audio: ``[audio_dim]`` mean VGGish vector of the training clips.
    """
    layer.bias -= layer.weight @ mean_audio.to(layer.weight)
