"""HAN: the hybrid attention network of audio-visual video parsing (Tian et al., ECCV 2020; REFERENCE §11).

Published (``HANLayer`` in AVVP-ECCV20 ``nets/net_audiovisual.py``): clip-level ``[T,B,512]`` audio and
visual snippet features. For a query modality q and the other modality m::

    q = LN1(q + SelfAttn(q, q, q) + CrossAttn(q, m, m))      # both attentions over the T snippets, summed
    q = LN2(q + Linear2(ReLU(Linear1(q))))                   # post-norm FFN

and the ``Encoder`` applies the *same* layer in both directions, ``a' = HAN(a, v)`` and ``v' = HAN(v, a)``.

Adaptation to SAM's ``[B,T,256,64,64]`` embeddings (the thesis does not say how it inserted HAN):

1. Visual snippet token per frame: attentive pooling of the frame's HW embedding vectors (a learned
   ``Linear(C, 1)`` score, softmax over HW, weighted sum), the spatial counterpart of HAN's own attentive
   MMIL pooling over time; then ``fc_v``. Audio token: ``fc_a(VGGish)`` (HAN's ``fc_a`` is Linear(128, 512)).
2. HAN's defining computation, unchanged, on the ``[B,T,C]`` sequences: self- and cross-modal attention over
   the clip's T frames, summed, post-norm, FFN, one weight-shared layer per depth for both directions
   (published: d 512, 1 head, FFN 512, dropout 0.1). Layers are chained (the published ``Encoder`` feeds
   every layer the original inputs, which only matters for depth > 1; it used depth 1).
3. Back to the map: HAN's visual output v'_t re-weights and shifts its frame's map (FiLM: per-channel scale
   and shift from a linear map of v'_t), post-norm like HAN's own residuals:
   ``V = LN(E * (1 + gamma) + beta)``. dense = E + V (ST-BAVA's wiring); sparse = a' twice.

Attention runs inside each clip (batch-first ``[B,T,C]``), so clips never mix.
"""

from __future__ import annotations

import torch
from torch import nn

from stbava.model.fusion.registry import FusionPrompts, map_tokens, register_fusion, token_pair


class HANLayer(nn.Module):
    """One HAN layer: ``q <- LN2(FFN(LN1(q + self_attn(q) + cm_attn(q, m))))`` with the published names.

    Args:
        d_model: token width; nhead: attention heads; dim_feedforward: FFN hidden width;
        dropout: on the attention weights and on each residual branch (0.1 as published).
    """

    def __init__(self, d_model: int, nhead: int = 1, dim_feedforward: int = 512,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cm_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout11 = nn.Dropout(dropout)
        self.dropout12 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src_q: torch.Tensor, src_v: torch.Tensor) -> torch.Tensor:
        """``src_q`` ``[B,T,d]`` attends to itself and to ``src_v`` ``[B,T,d]`` (the other modality)."""
        cross = self.cm_attn(src_q, src_v, src_v, need_weights=False)[0]
        self_ = self.self_attn(src_q, src_q, src_q, need_weights=False)[0]
        q = self.norm1(src_q + self.dropout11(cross) + self.dropout12(self_))
        return self.norm2(q + self.dropout2(self.linear2(self.dropout(torch.relu(self.linear1(q))))))


@register_fusion("han")
class HANFusion(nn.Module):
    """Registered ``han``: pooled visual tokens, HAN in both directions, FiLM of the map (module docstring).

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion``).
        depth: HAN layers (each shared by both directions); heads, dim_feedforward, dropout: see
            :class:`HANLayer` (published: 1 head, FFN 512, dropout 0.1).
    """

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64, depth: int = 1,
                 heads: int = 1, dim_feedforward: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        self.fc_a = nn.Linear(audio_dim, embed_dim)
        self.pool_score = nn.Linear(embed_dim, 1, bias=False)  # a bias would cancel in the softmax
        self.fc_v = nn.Linear(embed_dim, embed_dim)
        self.layers = nn.ModuleList(HANLayer(embed_dim, heads, dim_feedforward, dropout)
                                    for _ in range(depth))
        self.film = nn.Linear(embed_dim, 2 * embed_dim)
        self.map_norm = nn.LayerNorm(embed_dim)

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """The fusion contract (``FusionPrompts``); ``image_pe`` unused: the published module has no PE."""
        image, audio, tokens = map_tokens(self, image, audio, self.fc_a.weight.dtype)  # tokens [B,T,HW,C]
        alpha = self.pool_score(tokens).softmax(dim=2)  # [B,T,HW,1], a spatial map per frame
        v = self.fc_v((alpha * tokens).sum(dim=2))  # [B,T,C]
        a = self.fc_a(audio)
        for layer in self.layers:
            a, v = layer(a, v), layer(v, a)
        gamma, beta = self.film(v).chunk(2, dim=-1)  # [B,T,C] each
        fused = self.map_norm(tokens * (1 + gamma[:, :, None]) + beta[:, :, None])  # [B,T,HW,C]
        return FusionPrompts(dense=image + fused.transpose(2, 3).reshape(image.shape), sparse=token_pair(a))
