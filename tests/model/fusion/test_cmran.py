"""CMRAN: each published piece against a literal re-implementation (sequence-first, as in FloretCat/CMRAN),
then the SAM adaptation recomputed from those pieces."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from random_weights import gen, randomise
from torch import nn

from stbava.model.fusion.cmran import AudioGuidedAttention, CMRANFusion, RelationLayer

D, HEADS, FFN = 32, 4, 48


class LiteralAGA(nn.Module):
    """``New_Audio_Guided_Attention`` as published, with its 512/256 widths as ``dim``/``dim // 2``."""

    def __init__(self, dim: int, audio_dim: int = 128) -> None:
        super().__init__()
        self.affine_video_1 = nn.Linear(dim, dim)
        self.affine_audio_1 = nn.Linear(audio_dim, dim)
        self.affine_bottleneck = nn.Linear(dim, dim // 2)
        self.affine_v_c_att = nn.Linear(dim // 2, dim)
        self.affine_video_2 = nn.Linear(dim, dim // 2)
        self.affine_audio_2 = nn.Linear(audio_dim, dim // 2)
        self.affine_v_s_att = nn.Linear(dim // 2, 1)
        self.relu, self.tanh, self.softmax = nn.ReLU(), nn.Tanh(), nn.Softmax(dim=-1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """video ``[batch, T, h, w, C]``; audio ``[T, batch, 128]`` (the main model passes it transposed)."""
        return self.maps(video, audio)[2]

    def maps(self, video: torch.Tensor,
             audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The published forward, also returning its two maps: ``c_att_visual_feat`` as ``[batch, T, hw, C]``
        and ``spatial_att_maps`` as ``[batch, T, hw]``, then the published output ``[batch, T, C]``."""
        audio = audio.transpose(1, 0)
        batch, t_size, h, w, v_dim = video.size()
        a_dim = audio.size(-1)
        audio_feature = audio.reshape(batch * t_size, a_dim)
        visual_feature = video.reshape(batch, t_size, -1, v_dim)
        raw_visual_feature = visual_feature
        audio_query_1 = self.relu(self.affine_audio_1(audio_feature)).unsqueeze(-2)
        video_query_1 = self.relu(self.affine_video_1(visual_feature)).reshape(batch * t_size, h * w, -1)
        audio_video_query_raw = (audio_query_1 * video_query_1).mean(-2)
        audio_video_query = self.relu(self.affine_bottleneck(audio_video_query_raw))
        channel_att_maps = self.affine_v_c_att(audio_video_query).sigmoid().reshape(batch, t_size, -1, v_dim)
        c_att_visual_feat = raw_visual_feature * (channel_att_maps + 1)
        c_att_visual_feat = c_att_visual_feat.reshape(batch * t_size, -1, v_dim)
        c_att_visual_query = self.relu(self.affine_video_2(c_att_visual_feat))
        audio_query_2 = self.relu(self.affine_audio_2(audio_feature)).unsqueeze(-2)
        audio_video_query_2 = c_att_visual_query * audio_query_2
        spatial_att_maps = self.softmax(self.tanh(self.affine_v_s_att(audio_video_query_2)).transpose(2, 1))
        pooled = torch.bmm(spatial_att_maps, c_att_visual_feat).squeeze().reshape(batch, t_size, v_dim)
        return (c_att_visual_feat.reshape(batch, t_size, h * w, v_dim),
                spatial_att_maps.reshape(batch, t_size, h * w), pooled)


class LiteralEncoderLayer(nn.Module):
    """Published ``EncoderLayer`` (post-norm self-attention + ReLU FFN), ``[T,B,d]``."""

    def __init__(self, d: int, nhead: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.linear1, self.dropout, self.linear2 = nn.Linear(d, ffn), nn.Dropout(dropout), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src, src, src)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class LiteralDecoderLayer(nn.Module):
    """Published ``DecoderLayer``: its ``self_attn`` is created but never called; ``[T,B,d]``."""

    def __init__(self, d: int, nhead: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.linear1, self.dropout, self.linear2 = nn.Linear(d, ffn), nn.Dropout(dropout), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = torch.cat([memory, tgt], dim=0)
        tgt2 = self.multihead_attn(tgt, memory, memory)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm2(tgt + self.dropout2(tgt2))


def test_audio_guided_attention_equals_published():
    lit = LiteralAGA(D).eval()
    randomise(lit, 0)
    mine = AudioGuidedAttention(D)
    mine.load_state_dict(lit.state_dict(), strict=True)
    video, audio = torch.randn(2, 3, 4, 5, D, generator=gen(1)), torch.rand(2, 3, 128, generator=gen(2))
    with torch.no_grad():
        want_v_c, want_s, want = lit.maps(video, audio.transpose(0, 1))
        v_c, s, pooled = mine(video.reshape(2, 3, 20, D), audio)
    torch.testing.assert_close(pooled, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_c, want_v_c, rtol=1e-5, atol=1e-5)  # the channel-attended map
    torch.testing.assert_close(s, want_s, rtol=1e-5, atol=1e-5)  # the spatial attention
    assert (want_v_c - video.reshape(2, 3, 20, D)).abs().mean() > 0.1 * video.abs().mean()  # both maps count:
    assert (want_s * 20).std() > 0.1  # the channel re-weighting and a non-uniform spatial attention
    # tanh bounds the scores, so the mean-1 spread factor HW * s stays within [e^-2, e^2]
    assert (want_s * 20).min() >= math.exp(-2) - 1e-6 and (want_s * 20).max() <= math.exp(2) + 1e-6


def test_encoder_and_relation_layers_equal_published():
    enc_lit, dec_lit = LiteralEncoderLayer(D, HEADS, FFN).eval(), LiteralDecoderLayer(D, HEADS, FFN).eval()
    randomise(enc_lit, 3), randomise(dec_lit, 4)
    enc = nn.TransformerEncoderLayer(D, HEADS, FFN, batch_first=True).eval()
    enc.load_state_dict(enc_lit.state_dict(), strict=True)
    dec = RelationLayer(D, HEADS, FFN).eval()
    missing, unexpected = dec.load_state_dict(dec_lit.state_dict(), strict=False)
    unused = {k for k in dec_lit.state_dict() if k.startswith("self_attn.")}
    assert missing == [] and set(unexpected) == unused
    q, m = torch.randn(2, 5, D, generator=gen(5)), torch.randn(2, 5, D, generator=gen(6))
    with torch.no_grad():
        torch.testing.assert_close(enc(q), enc_lit(q.transpose(0, 1)).transpose(0, 1), rtol=1e-5, atol=1e-5)
        want = dec_lit(q.transpose(0, 1), m.transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(dec(q, m), want, rtol=1e-5, atol=1e-5)


def _literal_relations(model: CMRANFusion, visual: torch.Tensor, audio: torch.Tensor):
    """supv_main_model's steps after the AGA, sequence-first, with the model's weights in literal layers."""

    def literal(layer: nn.Module, cls: type) -> nn.Module:
        lit = cls(D, HEADS, FFN).eval()
        lit.load_state_dict(layer.state_dict(), strict=False)
        return lit

    def itrm(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:  # affine, then the encoder layers
        x = seq[0](x)
        for layer in list(seq)[1:]:
            x = literal(layer, LiteralEncoderLayer)(x)
        return x

    v_seq, a_seq = visual.transpose(0, 1), audio.transpose(0, 1)  # [T,B,·]
    video_kv = itrm(model.video_encoder, v_seq)
    audio_q = literal(model.audio_decoder, LiteralDecoderLayer)(model.audio_query(a_seq), video_kv)
    audio_kv = itrm(model.audio_encoder, a_seq)
    video_q = literal(model.video_decoder, LiteralDecoderLayer)(model.video_query(v_seq), audio_kv)
    # AudioVideoInter
    global_feat = video_q * audio_q
    memory = torch.cat([audio_q, video_q], dim=0)
    mha = nn.MultiheadAttention(D, HEADS).eval()
    mha.load_state_dict(model.av_inter.state_dict())
    fused = model.av_norm(global_feat + mha(global_feat, memory, memory)[0])
    return audio_q.transpose(0, 1), fused.transpose(0, 1)


def test_fusion_equals_the_adaptation_built_from_published_pieces():
    torch.manual_seed(0)
    model = CMRANFusion(embed_dim=D, grid=4, heads=HEADS, dim_feedforward=FFN).eval()
    randomise(model, 7)
    image, audio = torch.randn(2, 3, D, 4, 4, generator=gen(8)), torch.rand(2, 3, 128, generator=gen(9))
    with torch.no_grad():
        out = model(image, audio)
        tokens = image.flatten(3).transpose(2, 3)
        lit = LiteralAGA(D).eval()
        lit.load_state_dict(model.spatial_channel_att.state_dict())
        v_c, s, pooled = lit.maps(tokens.reshape(2, 3, 4, 4, D), audio.transpose(0, 1))
        a_q, fused = _literal_relations(model, pooled, audio)
        spread = 16 * s[..., None] * (fused @ model.map_proj.weight.T + model.map_proj.bias)[:, :, None]
        ln = model.map_norm
        v = F.layer_norm(v_c + spread, (D,), ln.weight, ln.bias, ln.eps)
    dense = image + v.transpose(2, 3).reshape(image.shape)
    torch.testing.assert_close(out.dense, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sparse, torch.stack([a_q, a_q], dim=2), rtol=1e-5, atol=1e-5)
