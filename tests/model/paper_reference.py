"""Test-only oracle for the ``paper`` spatial mode of the ST-BAVA block (REFERENCE §4.5), for one clip.

Written from the formulas, not from ``stbava.model.bava``: the temporal steps and everything else are the
published block of :mod:`published_reference` (sequence-first MHA on ``repeat``-ed audio, ``AdaptiveAvgPool1d``);
only the two spatial steps are replaced, and those are computed frame by frame and head by head from the raw
``avs_attention`` weights:

- scores  s_h[t,p] = q_h(A[t] + A0[t]) . k_h(V[t,p] + P_v[p]) / sqrt(d), d = C / heads;
  alpha_h[t,:] = softmax over the HW pixels p;
- step 3 (A_vq): A[t] <- LN3_2(A[t] + W_o concat_h(sum_p alpha_h[t,p] v_h(V[t,p])) + b_o);
- step 6 (V_aq): V[t,p] <- LN5_2(V[t,p] + W_o concat_h(HW alpha_h[t,p] v_h(A[t])) + b_o), with V after step 5;
  the out-projection bias is added once per pixel, as the MHA adds it once per output token.

q_h, k_h, v_h are head h's rows of the in-projection (with their biases): MHA's head h owns channels
[h*d, (h+1)*d). Eval mode only (no dropout).
"""

from __future__ import annotations

import math

import torch
from published_reference import PubBlock


def _head_rows(mha: torch.nn.MultiheadAttention, which: int, h: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``[d,C]`` and bias ``[d]`` of head h of the q (0), k (1) or v (2) in-projection."""
    c = mha.embed_dim
    rows = slice(which * c + h * d, which * c + (h + 1) * d)
    return mha.in_proj_weight[rows], mha.in_proj_bias[rows]


class PaperBlock(PubBlock):
    """Paper-mode block on the T frames of one clip: audio ``[T,1,C]``, visual ``[T,HW,C]``, P_v ``[1,HW,C]``."""

    def __init__(self, c: int = 256, heads: int = 8) -> None:
        super().__init__(c, heads)
        self.heads = heads

    def spatial_alpha(self, audio_q: torch.Tensor, visual_k: torch.Tensor) -> torch.Tensor:
        """alpha ``[T,heads,HW]``: per frame and head, a softmax over the pixels (written out by hand)."""
        mha = self.avs_attention
        t, n_hw, c = visual_k.shape
        d = c // self.heads
        alpha = torch.empty(t, self.heads, n_hw, dtype=visual_k.dtype)
        for ti in range(t):
            for h in range(self.heads):
                w_q, b_q = _head_rows(mha, 0, h, d)
                w_k, b_k = _head_rows(mha, 1, h, d)
                q = w_q @ audio_q[ti, 0] + b_q  # [d]
                k = visual_k[ti] @ w_k.T + b_k  # [HW, d]
                s = (k @ q) / math.sqrt(d)
                e = torch.exp(s - s.max())
                alpha[ti, h] = e / e.sum()
        return alpha

    def pooled_visual(self, audio_q: torch.Tensor, visual_k: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Step 3 update ``[T,1,C]``: the attention-pooled visual values, out-projected."""
        mha = self.avs_attention
        t, _, c = visual.shape
        d = c // self.heads
        alpha = self.spatial_alpha(audio_q, visual_k)
        out = torch.empty(t, 1, c, dtype=visual.dtype)
        for ti in range(t):
            heads = []
            for h in range(self.heads):
                w_v, b_v = _head_rows(mha, 2, h, d)
                heads.append(alpha[ti, h] @ (visual[ti] @ w_v.T + b_v))  # sum_p alpha_p v_h(V_p): [d]
            out[ti, 0] = mha.out_proj.weight @ torch.cat(heads) + mha.out_proj.bias
        return out

    def spread_audio(self, audio_q: torch.Tensor, visual_k: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Step 6 update ``[T,HW,C]``: each head's audio value spread over the pixels by HW * alpha."""
        mha = self.avs_attention
        t, n_hw, c = visual_k.shape
        d = c // self.heads
        alpha = self.spatial_alpha(audio_q, visual_k)
        out = torch.empty(t, n_hw, c, dtype=visual_k.dtype)
        for ti in range(t):
            heads = []
            for h in range(self.heads):
                w_v, b_v = _head_rows(mha, 2, h, d)
                val = w_v @ audio[ti, 0] + b_v  # v_h(A[t]): [d]
                heads.append(n_hw * alpha[ti, h][:, None] * val[None])  # [HW, d]
            out[ti] = torch.cat(heads, dim=1) @ mha.out_proj.weight.T + mha.out_proj.bias
        return out

    def forward(self, audio, visual, audio_pe, visual_pe):
        n_hw = visual.shape[1]
        a = self.norm1(audio + self.embed_audio(audio))
        v = self.norm2(visual + self.embed_vis(visual))
        o = self.avt_attention(v + visual_pe, (a + audio_pe).repeat(1, n_hw, 1), a.repeat(1, n_hw, 1))[0]
        a = self.norm3_1(a + self.pool_hw(o))
        a = self.norm3_2(a + self.pooled_visual(a + audio_pe, v + visual_pe, v))
        a = self.norm4(a + self.embed_audio2(a))
        o = self.avt_attention((a + audio_pe).repeat(1, n_hw, 1), v + visual_pe, v)[0]
        fv = self.norm5_1(v + o)
        fv = self.norm5_2(fv + self.spread_audio(a + audio_pe, fv + visual_pe, a))
        fv = self.norm6(fv + self.embed_av(fv))
        return fv, a
