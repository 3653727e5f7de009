"""HAN: the layer against a literal (sequence-first) re-implementation of the published ``HANLayer``, and the
SAM adaptation (pooling, both directions with one shared layer, FiLM of the map) recomputed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from random_weights import randomise
from torch import nn

from stbava.model.fusion.han import HANFusion, HANLayer


class LiteralHANLayer(nn.Module):
    """The published ``HANLayer`` as written in AVVP-ECCV20: batch-first inputs permuted to ``[T,B,d]``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.cm_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout11 = nn.Dropout(dropout)
        self.dropout12 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src_q: torch.Tensor, src_v: torch.Tensor) -> torch.Tensor:
        src_q = src_q.permute(1, 0, 2)
        src_v = src_v.permute(1, 0, 2)
        src1 = self.cm_attn(src_q, src_v, src_v)[0]
        src2 = self.self_attn(src_q, src_q, src_q)[0]
        src_q = src_q + self.dropout11(src1) + self.dropout12(src2)
        src_q = self.norm1(src_q)
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src_q))))
        src_q = src_q + self.dropout2(src2)
        src_q = self.norm2(src_q)
        return src_q.permute(1, 0, 2)


@pytest.mark.parametrize("heads", [1, 4])
def test_layer_equals_published_layer(heads):
    torch.manual_seed(0)
    lit = LiteralHANLayer(32, heads, dim_feedforward=48).eval()
    randomise(lit, 1)
    mine = HANLayer(32, heads, dim_feedforward=48).eval()
    assert list(mine.state_dict()) == list(lit.state_dict())
    mine.load_state_dict(lit.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    q, m = torch.randn(3, 5, 32, generator=g), torch.randn(3, 5, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(mine(q, m), lit(q, m), rtol=1e-5, atol=1e-5)


def _by_hand(model: HANFusion, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HANFusion recomputed from its weights with the literal layer and explicit formulas."""
    b, t, c, h, w = image.shape
    tokens = image.reshape(b, t, c, h * w).permute(0, 1, 3, 2)  # [B,T,HW,C]
    scores = torch.einsum("btpc,c->btp", tokens, model.pool_score.weight[0])
    alpha = torch.exp(scores - scores.amax(-1, keepdim=True))
    alpha = alpha / alpha.sum(-1, keepdim=True)
    v = torch.einsum("btp,btpc->btc", alpha, tokens) @ model.fc_v.weight.T + model.fc_v.bias
    a = audio @ model.fc_a.weight.T + model.fc_a.bias
    for layer in model.layers:
        lit = LiteralHANLayer(c, layer.self_attn.num_heads, layer.linear1.out_features).eval()
        lit.load_state_dict(layer.state_dict())
        a, v = lit(a, v), lit(v, a)  # one layer, both directions, from the same inputs (published Encoder)
    film = v @ model.film.weight.T + model.film.bias
    gamma, beta = film[..., :c], film[..., c:]
    pre = tokens * (1 + gamma[:, :, None, :]) + beta[:, :, None, :]
    ln = model.map_norm
    fused = F.layer_norm(pre, (c,), ln.weight, ln.bias, ln.eps)
    dense = image + fused.permute(0, 1, 3, 2).reshape(b, t, c, h, w)
    return dense, torch.stack([a, a], dim=2)


@pytest.mark.parametrize("depth", [1, 2])
def test_fusion_equals_the_adaptation_by_hand(depth):
    torch.manual_seed(0)
    model = HANFusion(embed_dim=32, grid=4, depth=depth, heads=2, dim_feedforward=48).eval()
    randomise(model, 3)
    g = torch.Generator().manual_seed(4)
    image, audio = torch.randn(2, 3, 32, 4, 4, generator=g), torch.rand(2, 3, 128, generator=g)
    with torch.no_grad():
        out = model(image, audio)
        dense, sparse = _by_hand(model, image, audio)
    torch.testing.assert_close(out.dense, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sparse, sparse, rtol=1e-5, atol=1e-5)
    assert len(model.layers) == depth  # one layer per depth serves both directions
