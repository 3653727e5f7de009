"""SAM 2's image features as one tensor: the embedding and its two high-resolution levels, packed exactly.

SAM 2's mask decoder takes, besides the ``[C,g,g]`` image embedding, two projected high-resolution levels
``s0 [C/8,4g,4g]`` and ``s1 [C/4,2g,2g]`` (``forward_image`` already ran the decoder's ``conv_s0`` / ``conv_s1``).
They are stored and passed as one ``[C + 2C + C, g, g]`` tensor: the embedding, then ``s0`` and ``s1``
space-to-depth onto the ``g x g`` grid (``pixel_unshuffle`` by 4 and 2, a permutation, so nothing is rounded).
So every place that moves image embeddings (cache rows, batches, the GPU-resident split, live encoders) moves
SAM 2's levels unchanged, and only the mask decoder unpacks them. A tensor of ``C`` channels has no levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVEL_FACTORS = (4, 2)  # s0 is 4x, s1 2x the embedding grid


def packed_channels(embed_dim: int, high_res: bool) -> int:
    """Channels of the packed tensor: ``C`` alone, or ``C + 2C + C`` with the two levels (1024 for C=256)."""
    return embed_dim * 4 if high_res else embed_dim


def pack_levels(embed: torch.Tensor, s0: torch.Tensor | None = None, s1: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``[N,C,g,g]`` (+ ``[N,C/8,4g,4g]``, ``[N,C/4,2g,2g]``) -> ``[N,C(+3C),g,g]``."""
    if s0 is None and s1 is None:
        return embed
    if s0 is None or s1 is None:
        raise ValueError("pack_levels needs both high-resolution levels or neither")
    return torch.cat([embed, F.pixel_unshuffle(s0, 4), F.pixel_unshuffle(s1, 2)], dim=1)


def unpack_levels(x: torch.Tensor, embed_dim: int) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``[..., C(+3C), g, g]`` -> ``(embedding [..., C, g, g], [s0, s1] or None)``; leading dims are kept.

    Raises:
        ValueError: a channel count that is neither ``C`` nor ``4C``.
    """
    c = x.shape[-3]
    if c == embed_dim:
        return x, None
    if c != 4 * embed_dim:
        raise ValueError(f"image features of {c} channels: expected {embed_dim} (embedding) or {4 * embed_dim} "
                         "(embedding + SAM 2's two high-resolution levels)")
    lead = x.shape[:-3]
    flat = x.reshape(-1, c, *x.shape[-2:])
    s0 = F.pixel_shuffle(flat[:, embed_dim:3 * embed_dim], 4)
    s1 = F.pixel_shuffle(flat[:, 3 * embed_dim:], 2)
    return x[..., :embed_dim, :, :], [s0.reshape(*lead, *s0.shape[1:]), s1.reshape(*lead, *s1.shape[1:])]
