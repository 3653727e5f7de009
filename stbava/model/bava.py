"""One ST-BAVA block: bidirectional audio-visual attention over space and time (REFERENCE §4).

Sub-module names are the published ones (``embed_vis``, ``avt_attention``, ``norm3_1``, ...), so an official
``layers.{l}.*`` state dict loads 1:1. Unlike the published code, clips stay explicit ``[B,T,...]`` tensors:
the temporal attention runs over the T frames of one clip and never mixes clips (REFERENCE §4.4-3).

Two spatial-attention modes:

- ``reference`` (default, the published computation, §4.3): the audio update (step 3) attends from every
  pixel to a single audio key, so its softmax is identically 1 and the image never influences it; the
  visual update (step 6) pools V with a real spatial map and adds that one vector to every pixel.
- ``paper`` (§4.5): one real softmax over HW per frame and head. Audio is updated by the attention-pooled
  visual vector; the visual update spreads the audio value over the pixels with that map (rescaled to
  mean 1), so it varies in space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL_MODES = ("reference", "paper")



def _pixels_first(x: torch.Tensor) -> torch.Tensor:
    """``[N,L,C]`` with the memory layout of ``[L,N,C]``: the layout ``nn.MultiheadAttention(batch_first=True)``
    transposes its inputs to before projecting them.

    Why: on a transposed (non-contiguous) 3-D input without autograd, ``F.linear`` cannot fold it into one
    matmul and broadcasts the ``[C,C]`` weight to ``[L,C,C]`` instead; under CPU bf16 autocast that view is
    copied, 4096 weight copies per call at the 64x64 grid, which made bf16 evaluation ~7x slower than fp32
    (benchmarks/RESULTS.md §7). One copy of the activations into this layout avoids it; values are unchanged.
    """
    return x.transpose(0, 1).contiguous().transpose(0, 1)

class MLPBlock(nn.Module):
    """Linear -> GELU -> Linear (hidden width 256 in the published blocks, not 4x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class BAVABlock(nn.Module):
    """Audio <- visual (steps 1-4), then visual <- audio (steps 5-7), post-norm residuals.

    Args:
        dim: feature width C (256, SAM's prompt width).
        heads: attention heads of both MHAs.
        mlp_dim: hidden width of the four MLPs.
        dropout: dropout on attention weights (0.1 as published).
        spatial_mode: ``reference`` | ``paper`` (see module docstring).
        temporal: False drops the temporal steps 2 and 5 (and ``avt_attention``, ``norm3_1``, ``norm5_1``).
        bidirectional: False drops the visual-to-audio steps 2-3 (audio keeps only its MLPs), leaving the
            audio-to-visual direction.
    """

    def __init__(self, dim: int = 256, heads: int = 8, mlp_dim: int = 256, dropout: float = 0.1,
                 spatial_mode: str = "reference", temporal: bool = True, bidirectional: bool = True) -> None:
        super().__init__()
        if spatial_mode not in SPATIAL_MODES:
            raise ValueError(f"spatial_mode must be one of {SPATIAL_MODES}, got {spatial_mode!r}")
        self.spatial_mode = spatial_mode
        self.temporal = temporal
        self.bidirectional = bidirectional
        self.heads = heads
        self.embed_vis = MLPBlock(dim, mlp_dim)
        self.embed_audio = MLPBlock(dim, mlp_dim)
        self.embed_audio2 = MLPBlock(dim, mlp_dim)
        self.embed_av = MLPBlock(dim, mlp_dim)
        if temporal:  # sequence-first, as published: (L, N, E) = (frames, pixels, C)
            self.avt_attention = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.avs_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if temporal and bidirectional:
            self.norm3_1 = nn.LayerNorm(dim)
        if bidirectional:
            self.norm3_2 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        if temporal:
            self.norm5_1 = nn.LayerNorm(dim)
        self.norm5_2 = nn.LayerNorm(dim)
        self.norm6 = nn.LayerNorm(dim)

    # -- attention primitives -------------------------------------------------------------------------------

    def temporal_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per pixel, attend over the T frames of the same clip (``avt_attention``'s weights and semantics).

        The published code repeats the audio token over the HW pixels and then projects every copy. Here
        each input is projected at its own size (an audio token once per frame) and only the projected
        heads are broadcast over the pixels: the same numbers as ``nn.MultiheadAttention`` on the repeated
        inputs (test), without HW identical 256x256 projections per audio token (about a fifth of a
        block's FLOPs).

        Args:
            q, k, v: ``[B,T,L,C]`` or ``[B,T,1,C]`` (an audio token, shared by the L pixels as published).

        Returns:
            ``[B,T,L,C]``; softmax over the key frames, dropout on the weights in training as in MHA.
        """
        mha = self.avt_attention
        b, t, _, c = q.shape
        n = max(q.shape[2], k.shape[2], v.shape[2])
        h, d = self.heads, c // self.heads
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            # [B,T,L,C] -> [B,L,h,T,d]; L stays 1 for an audio token and broadcasts in the matmuls below
            return F.linear(x, w, bias).view(b, t, x.shape[2], h, d).permute(0, 2, 3, 1, 4)

        qh = heads(q, w_q, b_q) * (1.0 / math.sqrt(d))
        scores = qh @ heads(k, w_k, b_k).transpose(-1, -2)  # [B,n,h,T,T]
        attn = F.dropout(scores.softmax(dim=-1), p=mha.dropout, training=self.training)
        out = attn @ heads(v, w_v, b_v)  # [B,n,h,T,d]
        out = out.permute(0, 3, 1, 2, 4).reshape(b, t, n, c)
        return mha.out_proj(out)

    def spatial_map(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Per-head spatial attention map of ``avs_attention`` (no dropout).

        Args:
            query: ``[N,1,C]`` one audio token per frame.
            key: ``[N,L,C]`` the frame's L = HW visual tokens.

        Returns:
            ``[N,heads,L]``, a softmax over the L pixels (what MHA computes for this query/key pair).
        """
        mha = self.avs_attention
        n, l, c = key.shape
        d = c // self.heads
        w_q, w_k, _ = mha.in_proj_weight.chunk(3)
        b_q, b_k, _ = mha.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(n, self.heads, 1, d)
        kk = F.linear(key, w_k, b_k).view(n, l, self.heads, d).transpose(1, 2)
        scores = (q @ kk.transpose(-1, -2)).squeeze(2) / math.sqrt(d)
        return scores.softmax(dim=-1)

    # -- the spatial steps (3 and 6), separated so tests can probe them -------------------------------------

    def spatial_audio_update(self, a: torch.Tensor, v: torch.Tensor, a_pe: torch.Tensor,
                             v_pe: torch.Tensor) -> torch.Tensor:
        """Step 3: what is added to A (before ``norm3_2``).

        Args:
            a, a_pe: ``[B,T,1,C]``; v: ``[B,T,HW,C]``; v_pe: broadcastable to v.

        Returns:
            ``[B,T,1,C]``.
        """
        b, t, n, c = v.shape
        vq = _pixels_first((v + v_pe).reshape(b * t, n, c))
        ak = (a + a_pe).reshape(b * t, 1, c)
        av = a.reshape(b * t, 1, c)
        if self.spatial_mode == "reference":
            # Every pixel queries the single audio key: softmax over one key is 1, so the result is
            # W_o(W_v a + b_v) + b_o for every pixel (plus dropout noise in training) - V has no influence.
            out = self.avs_attention(vq, ak, av, need_weights=False)[0].mean(dim=1, keepdim=True)
        else:
            # Audio queries the HW pixels: a real spatial softmax pools the visual features.
            out = self.avs_attention(ak, vq, _pixels_first(v.reshape(b * t, n, c)), need_weights=False)[0]
        return out.reshape(b, t, 1, c)

    def spatial_visual_update(self, a: torch.Tensor, v: torch.Tensor, a_pe: torch.Tensor,
                              v_pe: torch.Tensor) -> torch.Tensor:
        """Step 6: what is added to V (before ``norm5_2``).

        Args:
            a, a_pe: ``[B,T,1,C]``; v: ``[B,T,HW,C]``; v_pe: broadcastable to v.

        Returns:
            ``[B,T,HW,C]`` (reference: the same vector at every pixel; paper: spatially varying).
        """
        b, t, n, c = v.shape
        aq = (a + a_pe).reshape(b * t, 1, c)
        vk = (v + v_pe).reshape(b * t, n, c)
        mha = self.avs_attention
        if self.spatial_mode == "reference":
            pooled = mha(aq, _pixels_first(vk), _pixels_first(v.reshape(b * t, n, c)), need_weights=False)[0]
            return pooled.reshape(b, t, 1, c).expand(b, t, n, c)
        alpha = self.spatial_map(aq, vk)  # [BT, heads, HW]
        alpha = F.dropout(alpha, p=mha.dropout, training=self.training) * n  # mean 1 over the pixels
        _, _, w_v = mha.in_proj_weight.chunk(3)
        _, _, b_v = mha.in_proj_bias.chunk(3)
        val = F.linear(a.reshape(b * t, c), w_v, b_v).view(b * t, self.heads, 1, c // self.heads)
        heads_out = alpha.unsqueeze(-1) * val  # [BT, heads, HW, d]
        out = mha.out_proj(heads_out.transpose(1, 2).reshape(b * t, n, c))
        return out.reshape(b, t, n, c)

    # -- the block ------------------------------------------------------------------------------------------

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, audio_pe: torch.Tensor,
                visual_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse one layer (argument order as the published ``layer(A, V, A0, P_v)``).

        Args:
            audio: A ``[B,T,1,C]``.
            visual: V ``[B,T,HW,C]``.
            audio_pe: A0 ``[B,T,1,C]`` (the initial projected audio, reused in every layer).
            visual_pe: P_v ``[1,1,HW,C]`` (SAM's dense PE, same for all frames).

        Returns:
            ``(V [B,T,HW,C], A [B,T,1,C])``.
        """
        a = self.norm1(audio + self.embed_audio(audio))  # step 1
        v = self.norm2(visual + self.embed_vis(visual))
        if self.bidirectional:
            if self.temporal:  # step 2: per pixel, V queries the clip's T audio frames; pooled over HW
                o1 = self.temporal_attention(v + visual_pe, a + audio_pe, a)
                a = self.norm3_1(a + o1.mean(dim=2, keepdim=True))
            a = self.norm3_2(a + self.spatial_audio_update(a, v, audio_pe, visual_pe))  # step 3
        a = self.norm4(a + self.embed_audio2(a))  # step 4
        if self.temporal:  # step 5: per pixel, each frame's audio queries that pixel in all T frames
            o3 = self.temporal_attention(a + audio_pe, v + visual_pe, v)
            v = self.norm5_1(v + o3)
        v = self.norm5_2(v + self.spatial_visual_update(a, v, audio_pe, visual_pe))  # step 6
        v = self.norm6(v + self.embed_av(v))  # step 7
        return v, a
