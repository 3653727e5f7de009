"""Registered ``none``: no fusion module, the decoder-only "SAM baseline" (thesis Table 6.2, "w/o fusion").

SAM's mask decoder gets the image embedding E unchanged as its visual src and the projected audio
``A0 = normalize(W a + b)`` twice as sparse tokens: the decoder's own two-way attention is the only place
where audio and image meet. The projection is ST-BAVA's (same name ``audio_embed_layer``, same
normalisation, same ``center_audio`` init), so the baseline differs from ST-BAVA by the blocks alone, and
checkpoints of the former ``model.fusion: false`` load unchanged (``flat_state_dict``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.fusion.registry import (
    FusionPrompts,
    center_projection,
    check_inputs,
    register_fusion,
    token_pair,
)


@register_fusion("none")
class NoFusion(nn.Module):
    """Audio projection only.

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion.registry``).
    """

    flat_state_dict = True

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        self.audio_embed_layer = nn.Linear(audio_dim, embed_dim)

    def center_audio(self, mean_audio: torch.Tensor) -> None:
        """Stage-two init, as ST-BAVA's (``AVSModel.center_audio_projection``)."""
        center_projection(self.audio_embed_layer, mean_audio)

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """dense = E ``[B,T,C,h,w]``; sparse = A0 twice ``[B,T,2,C]``; ``image_pe`` unused."""
        image, audio = check_inputs(image, audio, embed_dim=self.embed_dim, audio_dim=self.audio_dim,
                                    grid=self.grid, dtype=self.audio_embed_layer.weight.dtype)
        return FusionPrompts(dense=image, sparse=token_pair(F.normalize(self.audio_embed_layer(audio), dim=-1)))
