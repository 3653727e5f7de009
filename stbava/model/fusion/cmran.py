"""CMRAN: cross-modal relation-aware networks of audio-visual event localisation (Xu et al., ACM MM 2020).

Published (FloretCat/CMRAN ``model/models.py``, ``model/main_model.py``, ``supv_main_model``), on
``[B,T,7,7,512]`` visual maps and ``[B,T,128]`` VGGish audio:

1. ``New_Audio_Guided_Attention`` on the map: channel attention ``V_c = V * (1 + sigmoid(...))`` from the
   pixel-averaged product of audio and visual projections (bottleneck 512 -> 256 -> 512), then spatial
   attention ``s = softmax_HW(tanh(w^T (relu(W V_c) * relu(W' a))))`` pooling V_c to one vector per frame.
2. Per modality an internal temporal relation module (affine to d = 256, two post-norm self-attention
   encoder layers, 4 heads, FFN 2048) gives keys/values; a cross-modal relation attention (``DecoderLayer``)
   lets the other modality's query attend over the *concatenated memory* ``[other modality; itself]``
   (post-norm, FFN). Audio queries visual memory and visual queries audio memory.
3. ``AudioVideoInter``: ``g = v * a``, ``out = LN(g + MHA(g, [a; v], [a; v]))``, the fused per-frame feature.

Adaptation to SAM's ``[B,T,256,64,64]`` embeddings (the thesis does not say how it inserted CMRAN):

- Step 1 runs on the full SAM map with C = 256 in place of 512 (bottleneck C/2), unchanged otherwise. The
  published optional ``v_fc`` (Linear + ReLU + dropout on the map, "to adapt to different visual features")
  is left out: a ReLU would discard the sign of SAM's embedding. The unused ``affine_video_guided_*`` layers
  and the unused ``self_attn`` of ``DecoderLayer`` (created, never called) are left out too.
- Steps 2-3 run unchanged on the ``[B,T,C]`` sequences (d = C = 256 as published), attention over the T
  frames of one clip.
- Back to the map, with CMRAN's own maps: the channel-attended map V_c plus the fused feature of step 3,
  spread over the pixels by the audio-guided spatial attention s (rescaled to mean 1; the published tanh
  bounds it to [e^-2, e^2]), post-norm: ``V = LN(V_c + HW * s * W_o f)``. dense = E + V (ST-BAVA's wiring);
  sparse = the audio-query output of the cross-modal relation attention, twice.
"""

from __future__ import annotations

import torch
from torch import nn

from stbava.model.fusion.registry import FusionPrompts, map_tokens, register_fusion, token_pair


class AudioGuidedAttention(nn.Module):
    """CMRAN's audio-guided channel + spatial attention (published sub-module names), batched per clip.

    Args:
        dim: visual channels C (published 512); the bottleneck and spatial widths are C/2 as published.
        audio_dim: VGGish width (128).
    """

    def __init__(self, dim: int = 256, audio_dim: int = 128) -> None:
        super().__init__()
        self.affine_video_1 = nn.Linear(dim, dim)
        self.affine_audio_1 = nn.Linear(audio_dim, dim)
        self.affine_bottleneck = nn.Linear(dim, dim // 2)
        self.affine_v_c_att = nn.Linear(dim // 2, dim)
        self.affine_video_2 = nn.Linear(dim, dim // 2)
        self.affine_audio_2 = nn.Linear(audio_dim, dim // 2)
        self.affine_v_s_att = nn.Linear(dim // 2, 1)

    def forward(self, video: torch.Tensor,
                audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio-guided re-weighting of the map and its spatial pooling.

        Args:
            video: ``[B,T,HW,C]`` visual map; audio: ``[B,T,audio_dim]``.

        Returns:
            ``(V_c [B,T,HW,C], s [B,T,HW], pooled [B,T,C])``: the channel-attended map, the spatial
            attention (softmax over HW) and ``sum_p s_p V_c[p]`` (the published output).
        """
        a1 = torch.relu(self.affine_audio_1(audio)).unsqueeze(2)  # [B,T,1,C]
        query = (a1 * torch.relu(self.affine_video_1(video))).mean(dim=2)  # [B,T,C]
        channel = self.affine_v_c_att(torch.relu(self.affine_bottleneck(query))).sigmoid()  # [B,T,C]
        v_c = video * (channel.unsqueeze(2) + 1)
        a2 = torch.relu(self.affine_audio_2(audio)).unsqueeze(2)  # [B,T,1,C/2]
        scores = self.affine_v_s_att(torch.relu(self.affine_video_2(v_c)) * a2).squeeze(-1)  # [B,T,HW]
        s = torch.tanh(scores).softmax(dim=-1)
        return v_c, s, (s.unsqueeze(-1) * v_c).sum(dim=2)


class RelationLayer(nn.Module):
    """CMRAN's cross-modal relation attention (``DecoderLayer``): attend over ``[memory; query]``.

    ``q <- LN1(q + MHA(q, [m; q], [m; q]))``, ``q <- LN2(q + FFN(q))``, batch-first ``[B,T,d]``.
    """

    def __init__(self, d_model: int, nhead: int = 4, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``tgt`` ``[B,T,d]`` (query modality), ``memory`` ``[B,T',d]`` (other modality) -> ``[B,T,d]``."""
        memory = torch.cat([memory, tgt], dim=1)  # the concatenated memory: relations across and within
        tgt = self.norm1(tgt + self.dropout1(self.multihead_attn(tgt, memory, memory, need_weights=False)[0]))
        return self.norm2(tgt + self.dropout2(self.linear2(self.dropout(torch.relu(self.linear1(tgt))))))


@register_fusion("cmran")
class CMRANFusion(nn.Module):
    """Registered ``cmran`` (module docstring): AGA on the map, temporal + cross-modal relations, map update.

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion``); d_model = embed_dim.
        heads: heads of every attention (published 4); encoder_layers: self-attention layers per modality
            (published 2); dim_feedforward: FFN width (published 2048); dropout: 0.1 as published.
    """

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64, heads: int = 4,
                 encoder_layers: int = 2, dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        d = embed_dim
        self.spatial_channel_att = AudioGuidedAttention(d, audio_dim)

        def encoder(in_dim: int) -> nn.Sequential:  # internal temporal relation module, post-norm
            layers = [nn.TransformerEncoderLayer(d, heads, dim_feedforward, dropout, batch_first=True)
                      for _ in range(encoder_layers)]
            return nn.Sequential(nn.Linear(in_dim, d), *layers)

        self.video_encoder, self.audio_encoder = encoder(d), encoder(audio_dim)
        self.video_query, self.audio_query = nn.Linear(d, d), nn.Linear(audio_dim, d)
        self.video_decoder = RelationLayer(d, heads, dim_feedforward, dropout)
        self.audio_decoder = RelationLayer(d, heads, dim_feedforward, dropout)
        self.av_inter = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.av_dropout, self.av_norm = nn.Dropout(dropout), nn.LayerNorm(d)
        self.map_proj, self.map_norm = nn.Linear(d, d), nn.LayerNorm(d)

    def relations(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-3 on clip sequences: ``visual [B,T,C]``, ``audio [B,T,audio_dim]`` -> ``(a_q, fused)``.

        Returns the audio-query output ``[B,T,d]`` of the cross-modal relation attention and the
        ``AudioVideoInter`` output ``[B,T,d]``.
        """
        a_q = self.audio_decoder(self.audio_query(audio), self.video_encoder(visual))
        v_q = self.video_decoder(self.video_query(visual), self.audio_encoder(audio))
        g = v_q * a_q
        memory = torch.cat([a_q, v_q], dim=1)
        fused = self.av_norm(g + self.av_dropout(self.av_inter(g, memory, memory, need_weights=False)[0]))
        return a_q, fused

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """The fusion contract (``FusionPrompts``); ``image_pe`` unused: the published module has no PE."""
        image, audio, tokens = map_tokens(self, image, audio, self.map_proj.weight.dtype)  # tokens [B,T,HW,C]
        v_c, s, pooled = self.spatial_channel_att(tokens, audio)
        a_q, fused = self.relations(pooled, audio)
        spread = (s * s.shape[-1]).unsqueeze(-1) * self.map_proj(fused).unsqueeze(2)  # [B,T,HW,C]
        v = self.map_norm(v_c + spread)
        return FusionPrompts(dense=image + v.transpose(2, 3).reshape(image.shape), sparse=token_pair(a_q))
