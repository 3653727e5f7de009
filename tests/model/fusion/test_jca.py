"""JCA: the joint cross-attention core against a literal per-sample re-implementation of the published ``CAM``
loop, the fixed clip length, and the SAM adaptation recomputed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from random_weights import gen
from torch import nn

from stbava.model.fusion.jca import JCAFusion, JointCrossAttention


class LiteralCAM(nn.Module):
    """``CAM.forward`` of praveena2j/JointCrossAttentional-AV-Fusion without its encoders and regressor:
    one sample at a time, ``torch.mm`` on ``[L,·]`` matrices, as published."""

    def __init__(self, frames: int, hidden: int, k: int = 32) -> None:
        super().__init__()
        self.affine_a = nn.Linear(frames, frames, bias=False)
        self.affine_v = nn.Linear(frames, frames, bias=False)
        self.W_a = nn.Linear(frames, k, bias=False)
        self.W_v = nn.Linear(frames, k, bias=False)
        self.W_ca = nn.Linear(2 * hidden, k, bias=False)
        self.W_cv = nn.Linear(2 * hidden, k, bias=False)
        self.W_ha = nn.Linear(k, frames, bias=False)
        self.W_hv = nn.Linear(k, frames, bias=False)
        self.tanh, self.relu = nn.Tanh(), nn.ReLU()

    def forward(self, aud_all: torch.Tensor, vis_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fin_a, fin_v = [], []
        for i in range(aud_all.shape[0]):
            aud_fts, vis_fts = aud_all[i, :, :], vis_all[i, :, :]
            aud_vis_fts = torch.cat((aud_fts, vis_fts), 1)
            a_t = self.affine_a(aud_vis_fts.transpose(0, 1))
            att_aud = torch.mm(aud_fts.transpose(0, 1), a_t.transpose(0, 1))
            audio_att = self.tanh(torch.div(att_aud, math.sqrt(aud_vis_fts.shape[1])))
            v_t = self.affine_v(aud_vis_fts.transpose(0, 1))
            att_vis = torch.mm(vis_fts.transpose(0, 1), v_t.transpose(0, 1))
            vis_att = self.tanh(torch.div(att_vis, math.sqrt(aud_vis_fts.shape[1])))
            h_a = self.relu(self.W_ca(audio_att) + self.W_a(aud_fts.transpose(0, 1)))
            h_v = self.relu(self.W_cv(vis_att) + self.W_v(vis_fts.transpose(0, 1)))
            fin_a.append(self.W_ha(h_a).transpose(0, 1) + aud_fts)
            fin_v.append(self.W_hv(h_v).transpose(0, 1) + vis_fts)
        return torch.stack(fin_a), torch.stack(fin_v)


@pytest.mark.parametrize("frames", [3, 5])
def test_core_equals_published_loop(frames):
    torch.manual_seed(0)
    lit = LiteralCAM(frames, hidden=16, k=8)
    mine = JointCrossAttention(frames, hidden=16, k=8)
    assert list(mine.state_dict()) == list(lit.state_dict())
    mine.load_state_dict(lit.state_dict(), strict=True)
    x_a, x_v = torch.randn(3, frames, 16, generator=gen(1)), torch.randn(3, frames, 16, generator=gen(2))
    with torch.no_grad():
        want_a, want_v = lit(x_a, x_v)
        att_a, att_v = mine(x_a, x_v)
    torch.testing.assert_close(att_a, want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(att_v, want_v, rtol=1e-5, atol=1e-5)
    assert (att_v - x_v).abs().mean() > 0.05  # the attention term is not negligible


def test_the_joint_representation_couples_the_modalities():
    """Changing only the visual input changes the attended audio (through J), and vice versa."""
    torch.manual_seed(0)
    mine = JointCrossAttention(4, hidden=8, k=8)
    x_a, x_v = torch.randn(1, 4, 8, generator=gen(3)), torch.randn(1, 4, 8, generator=gen(4))
    with torch.no_grad():
        a1, v1 = mine(x_a, x_v)
        a2, _ = mine(x_a, x_v + 1)
        _, v3 = mine(x_a + 1, x_v)
    assert not torch.allclose(a1, a2) and not torch.allclose(v1, v3)


def test_clip_length_is_fixed_at_construction():
    m = JCAFusion(embed_dim=16, grid=2, frames=5)
    with pytest.raises(ValueError, match="built for 5 frames"):
        m(torch.randn(1, 3, 16, 2, 2), torch.rand(1, 3, 128))


def test_fusion_equals_the_adaptation_by_hand():
    torch.manual_seed(0)
    model = JCAFusion(embed_dim=32, grid=4, frames=3, k=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen(5)) * 0.1)
    image, audio = torch.randn(2, 3, 32, 4, 4, generator=gen(6)), torch.rand(2, 3, 128, generator=gen(7))
    lit = LiteralCAM(3, hidden=16, k=8)
    lit.load_state_dict(model.jca.state_dict())
    with torch.no_grad():
        out = model(image, audio)
        tokens = image.flatten(3).transpose(2, 3)  # [B,T,HW,C]
        alpha = torch.softmax(tokens @ model.pool_score.weight[0], dim=-1)
        pooled = torch.einsum("btp,btpc->btc", alpha, tokens)
        att_a, att_v = lit(F.linear(audio, model.encoder1.weight, model.encoder1.bias),
                           F.linear(pooled, model.encoder2.weight, model.encoder2.bias))
        film = F.linear(att_v, model.out_v.weight, model.out_v.bias)
        pre = tokens * (1 + film[..., None, :32]) + film[..., None, 32:]
        fused = F.layer_norm(pre, (32,), model.map_norm.weight, model.map_norm.bias)
        token = F.linear(att_a, model.out_a.weight, model.out_a.bias)
    dense = image + fused.transpose(2, 3).reshape(image.shape)
    torch.testing.assert_close(out.dense, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sparse, torch.stack([token, token], dim=2), rtol=1e-5, atol=1e-5)
