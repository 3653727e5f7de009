"""Registered ``stbava``: the audio projection and the stack of ST-BAVA blocks (REFERENCE §4-§5).

``A0 = normalize(W a + b)`` per frame, then L blocks ``(V, A) <- block(A, V, A0, P_v)`` on the clip's
``[B,T,HW,C]`` visual tokens (V starts as SAM's embedding E) with SAM's dense PE as ``P_v``. The decoder then
gets ``E + V`` as its visual src and ``A_L + A0`` twice as sparse tokens, as the published ``Decoder``.
Depth 0 is allowed (published zero-layer model: ``E + E`` dense, ``A0 + A0`` sparse).

The sub-modules keep the published names and sit at the top of the model's state dict
(``flat_state_dict``): ``audio_embed_layer.*``, ``layers.{l}.*`` load 1:1 from the published weights and
from every stbava checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.bava import BAVABlock
from stbava.model.fusion.registry import (
    FusionOutput,
    FusionPrompts,
    center_projection,
    check_inputs,
    register_fusion,
    token_pair,
)


@register_fusion("stbava")
class STBAVAFusion(nn.Module):
    """Audio projection + ``depth`` ST-BAVA blocks.

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion.registry``).
        depth: number of blocks (5 for S4, 7 for MS3; 0 allowed).
        heads, mlp_dim, attn_dropout, spatial_mode, temporal, bidirectional: see :class:`BAVABlock`.
    """

    flat_state_dict = True

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64, depth: int = 5,
                 heads: int = 8, mlp_dim: int = 256, attn_dropout: float = 0.1, spatial_mode: str = "reference",
                 temporal: bool = True, bidirectional: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        self.audio_embed_layer = nn.Linear(audio_dim, embed_dim)
        self.layers = nn.ModuleList(
            BAVABlock(embed_dim, heads, mlp_dim, attn_dropout, spatial_mode, temporal, bidirectional)
            for _ in range(depth)
        )

    def center_audio(self, mean_audio: torch.Tensor) -> None:
        """Stage-two init: A0 encodes how a sound differs from ``mean_audio`` (``AVSModel`` explains why)."""
        center_projection(self.audio_embed_layer, mean_audio)

    def _fuse(self, image: torch.Tensor, audio: torch.Tensor, image_pe: torch.Tensor) -> FusionOutput:
        """The blocks on checked inputs: ``image [B,T,C,h,w]``, ``audio [B,T,A]``, ``image_pe [1,C,h,w]``."""
        v0 = image.flatten(3).transpose(-1, -2)  # [B,T,HW,C]
        a0 = F.normalize(self.audio_embed_layer(audio), dim=-1).unsqueeze(2)  # [B,T,1,C], unit norm
        v_pe = image_pe.to(image.dtype).flatten(2).transpose(1, 2).unsqueeze(0)  # [1,1,HW,C]
        v, a = v0, a0
        for layer in self.layers:
            v, a = layer(a, v, a0, v_pe)
        return FusionOutput(v0, a0.squeeze(2), v, (a + a0).squeeze(2))

    def _checked(self, image: torch.Tensor, audio: torch.Tensor,
                 image_pe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image_pe is None:
            raise ValueError("ST-BAVA needs SAM's dense positional encoding: pass image_pe [1,C,h,w] "
                             "(AVSModel passes its pe_layer's grid)")
        image, audio = check_inputs(image, audio, embed_dim=self.embed_dim, audio_dim=self.audio_dim,
                                    grid=self.grid, dtype=self.audio_embed_layer.weight.dtype)
        return image, audio, image_pe

    def fuse(self, image: torch.Tensor, audio: torch.Tensor, image_pe: torch.Tensor | None) -> FusionOutput:
        """Features before and after the blocks (similarity figure); inputs as in :meth:`forward`."""
        return self._fuse(*self._checked(image, audio, image_pe))

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """``image [B,T,C,h,w]``, ``audio [B,T,A]``, ``image_pe [1,C,h,w]`` -> dense ``E + V``, sparse."""
        image, audio, image_pe = self._checked(image, audio, image_pe)
        fo = self._fuse(image, audio, image_pe)
        dense = image + fo.V.transpose(-1, -2).reshape(image.shape)
        return FusionPrompts(dense=dense, sparse=token_pair(fo.A))
