"""JCA: joint cross-attention for audio-visual fusion (Praveen et al., CVPR-W 2022; REFERENCE §11).

Published (praveena2j/JointCrossAttentional-AV-Fusion ``models/cam.py``, ``CAM``), per sample on
``[L,512]`` audio and visual features over L time steps: encode each to ``X_a, X_v`` ``[L,d_h]`` (d_h 128),
form the *joint* representation ``J = [X_a, X_v]`` ``[L,d]`` (d = 2 d_h), and use it as the key of the
cross-attention of both modalities (written here with features as rows, as the published code does)::

    C_a = tanh(X_a^T W_ja J / sqrt(d))                 # [d_h, d]   W_ja: [L,L] (affine_a, over time)
    H_a = ReLU(W_ca(C_a) + W_a(X_a^T))                 # [d_h, k]   W_ca: d -> k, W_a: L -> k (k 32)
    X_att_a = W_ha(H_a)^T + X_a                        # [L, d_h]   W_ha: k -> L
    (the same for v with affine_v, W_cv, W_v, W_hv; all without bias)

The learned maps act along the time axis, so a JCA module is built for a fixed number of frames L
(``frames``; AVSBench clips have 5). The published regressor head is task-specific and left out.

Adaptation to SAM's ``[B,T,256,64,64]`` embeddings (the thesis does not say how it inserted JCA):

1. Visual feature per frame: attentive pooling of the HW embedding vectors (a learned ``Linear(C, 1)``
   score, softmax over HW). Audio: the raw VGGish vector. ``encoder1`` / ``encoder2`` map them to d_h = C/2,
   so J has C channels.
2. JCA's joint cross-attention, unchanged, batched over clips (each clip its own ``[T,·]`` matrices).
   ``depth`` > 1 feeds the attended features back into the same block ``depth`` times (shared weights), the
   recursive JCA of Praveen et al. (ICASSP 2023); depth 1 (default) is the published JCA.
3. Back to SAM: ``out_a(X_att_a)`` is the sparse token (twice); ``out_v(X_att_v)`` re-weights and shifts its
   frame's map (FiLM, per-channel scale and shift), post-norm: ``V = LN(E * (1 + gamma) + beta)``;
   dense = E + V (ST-BAVA's wiring).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stbava.model.fusion.registry import FusionPrompts, map_tokens, register_fusion, token_pair


class JointCrossAttention(nn.Module):
    """The published joint cross-attention core (names as in ``CAM``), batched.

    Args:
        frames: L, the clip length the time-axis weights are built for.
        hidden: d_h, the width of each encoded modality (J has 2 * hidden channels).
        k: width of the attention hidden layer (published 32).
    """

    def __init__(self, frames: int, hidden: int, k: int = 32) -> None:
        super().__init__()
        self.frames = frames
        self.affine_a = nn.Linear(frames, frames, bias=False)
        self.affine_v = nn.Linear(frames, frames, bias=False)
        self.W_a = nn.Linear(frames, k, bias=False)
        self.W_v = nn.Linear(frames, k, bias=False)
        self.W_ca = nn.Linear(2 * hidden, k, bias=False)
        self.W_cv = nn.Linear(2 * hidden, k, bias=False)
        self.W_ha = nn.Linear(k, frames, bias=False)
        self.W_hv = nn.Linear(k, frames, bias=False)

    @staticmethod
    def _attend(x: torch.Tensor, joint_t: torch.Tensor, affine: nn.Linear, w_x: nn.Linear, w_c: nn.Linear,
                w_h: nn.Linear) -> torch.Tensor:
        """One modality: ``x [B,L,d_h]``, ``joint_t = J^T [B,d,L]`` -> ``X_att [B,L,d_h]``."""
        corr = x.transpose(1, 2) @ affine(joint_t).transpose(1, 2)  # X^T W J: [B,d_h,d]
        att = torch.tanh(corr / math.sqrt(joint_t.shape[1]))
        h = torch.relu(w_c(att) + w_x(x.transpose(1, 2)))  # [B,d_h,k]
        return w_h(h).transpose(1, 2) + x

    def forward(self, x_a: torch.Tensor, x_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_a, x_v`` ``[B,L,d_h]`` encoded audio, visual -> attended ``(X_att_a, X_att_v)``, same shape."""
        if x_a.shape[1] != self.frames:
            raise ValueError(f"this JCA module was built for {self.frames} frames per clip, "
                             f"got {x_a.shape[1]} "
                             "(its weights act along time; build it with frames=T)")
        joint_t = torch.cat([x_a, x_v], dim=-1).transpose(1, 2)  # J^T: [B,d,L]
        att_a = self._attend(x_a, joint_t, self.affine_a, self.W_a, self.W_ca, self.W_ha)
        att_v = self._attend(x_v, joint_t, self.affine_v, self.W_v, self.W_cv, self.W_hv)
        return att_a, att_v


@register_fusion("jca")
class JCAFusion(nn.Module):
    """Registered ``jca``: pooled visual features, joint cross-attention, FiLM of the map (module docstring).

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion``).
        frames: clip length T (5 in AVSBench); JCA's time-axis weights are sized by it.
        depth: recursions of the joint cross-attention, one set of weights (``model.depth``; published 1).
        hidden: d_h per modality (None = embed_dim // 2, so J is embed_dim wide); k: see
            :class:`JointCrossAttention`.
    """

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64, frames: int = 5,
                 depth: int = 1, hidden: int | None = None, k: int = 32) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        hidden = hidden or embed_dim // 2
        self.pool_score = nn.Linear(embed_dim, 1, bias=False)  # a bias would cancel in the softmax
        self.encoder1 = nn.Linear(audio_dim, hidden)
        self.encoder2 = nn.Linear(embed_dim, hidden)
        self.jca = JointCrossAttention(frames, hidden, k)
        self.depth = depth
        self.out_a = nn.Linear(hidden, embed_dim)
        self.out_v = nn.Linear(hidden, 2 * embed_dim)
        self.map_norm = nn.LayerNorm(embed_dim)

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """The fusion contract (``FusionPrompts``); ``image_pe`` unused: the published module has no PE."""
        image, audio, tokens = map_tokens(self, image, audio, self.encoder1.weight.dtype)  # tokens [B,T,HW,C]
        pooled = (self.pool_score(tokens).softmax(dim=2) * tokens).sum(dim=2)  # [B,T,C]
        att_a, att_v = self.encoder1(audio), self.encoder2(pooled)
        for _ in range(self.depth):
            att_a, att_v = self.jca(att_a, att_v)
        gamma, beta = self.out_v(att_v).unsqueeze(2).chunk(2, dim=-1)  # [B,T,1,C] each
        fused = self.map_norm(tokens * (1 + gamma) + beta)
        return FusionPrompts(dense=image + fused.transpose(2, 3).reshape(image.shape),
                             sparse=token_pair(self.out_a(att_a)))
