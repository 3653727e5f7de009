"""ST-BAVA block: published layout, clip-local temporal attention, the two spatial modes, ablations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from paper_reference import PaperBlock

from stbava.model.bava import BAVABlock

C, HW = 256, 36  # 6x6 grid keeps these tests fast

PUBLISHED_CHILDREN = ["embed_vis", "embed_audio", "embed_audio2", "embed_av",
                      "avt_attention", "avs_attention",
                      "norm1", "norm2", "norm3_1", "norm3_2", "norm4", "norm5_1", "norm5_2", "norm6"]


def _block(seed: int = 0, **kw) -> BAVABlock:
    torch.manual_seed(seed)
    return BAVABlock(**kw).eval()


def _inputs(b: int = 1, t: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a0 = F.normalize(torch.randn(b, t, 1, C, generator=g), dim=-1)
    a = torch.randn(b, t, 1, C, generator=g)
    v = torch.randn(b, t, HW, C, generator=g)
    v_pe = torch.randn(1, 1, HW, C, generator=g)
    return a, v, a0, v_pe


def test_published_layout_and_parameter_count():
    blk = _block()
    assert [n for n, _ in blk.named_children()] == PUBLISHED_CHILDREN
    assert sum(p.numel() for p in blk.parameters()) == 1_056_768
    assert blk.avt_attention.batch_first is False and blk.avs_attention.batch_first is True
    keys = set(blk.state_dict())
    assert {"avt_attention.in_proj_weight", "avs_attention.out_proj.bias", "embed_av.lin2.weight",
            "norm5_2.bias"} <= keys


def test_ablation_layouts():
    no_t = _block(temporal=False)
    assert not any(hasattr(no_t, n) for n in ("avt_attention", "norm3_1", "norm5_1"))
    one_way = _block(bidirectional=False)
    assert not hasattr(one_way, "norm3_1") and not hasattr(one_way, "norm3_2")
    assert hasattr(one_way, "avt_attention") and hasattr(one_way, "norm5_1")
    with pytest.raises(ValueError, match="spatial_mode"):
        BAVABlock(spatial_mode="fancy")


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_clip_output_does_not_depend_on_other_clips(mode):
    blk = _block(spatial_mode=mode)
    a, v, a0, pe = _inputs(b=3)
    with torch.no_grad():
        v_all, a_all = blk(a, v, a0, pe)
        v_one, a_one = blk(a[1:2], v[1:2], a0[1:2], pe)
    torch.testing.assert_close(v_all[1:2], v_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_all[1:2], a_one, rtol=1e-5, atol=1e-5)


def test_temporal_attention_mixes_frames_of_a_clip_only_when_enabled():
    a, v, a0, pe = _inputs(t=3)
    v2 = v.clone()
    v2[:, 2] += torch.randn_like(v2[:, 2])  # perturb the last frame
    for temporal, mixes in ((True, True), (False, False)):
        blk = _block(temporal=temporal)
        with torch.no_grad():
            out1 = blk(a, v, a0, pe)[0]
            out2 = blk(a, v2, a0, pe)[0]
        changed = not torch.allclose(out1[:, 0], out2[:, 0], atol=1e-6)
        assert changed is mixes, f"temporal={temporal}"
        assert not torch.allclose(out1[:, 2], out2[:, 2])  # the perturbed frame itself always changes


def test_single_frame_temporal_attention_is_the_value_projection():
    # REFERENCE §4.5: with T = 1 the softmax over one frame is 1, leaving W_o (W_v x + b_v) + b_o.
    blk = _block()
    a, v, a0, pe = _inputs(t=1)
    mha = blk.avt_attention
    _, _, w_v = mha.in_proj_weight.chunk(3)
    _, _, b_v = mha.in_proj_bias.chunk(3)
    with torch.no_grad():
        out = blk.temporal_attention(a + a0, v + pe, v)
        expected = mha.out_proj(F.linear(v, w_v, b_v))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_reference_spatial_audio_step_ignores_the_image():
    # REFERENCE §4.4-1 / §4.5 unit test: in reference mode perturbing V does not change A after step 3.
    a, v, a0, pe = _inputs()
    v2 = v + 3 * torch.randn_like(v)
    ref = _block(spatial_mode="reference")
    paper = _block(spatial_mode="paper")
    with torch.no_grad():
        torch.testing.assert_close(ref.spatial_audio_update(a, v, a0, pe),
                                   ref.spatial_audio_update(a, v2, a0, pe), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(paper.spatial_audio_update(a, v, a0, pe),
                                  paper.spatial_audio_update(a, v2, a0, pe), atol=1e-3)
        # without the temporal steps the whole audio path of a reference block is blind to the image
        r = _block(spatial_mode="reference", temporal=False)
        torch.testing.assert_close(r(a, v, a0, pe)[1], r(a, v2, a0, pe)[1], rtol=1e-5, atol=1e-5)
        p = _block(spatial_mode="paper", temporal=False)
        assert not torch.allclose(p(a, v, a0, pe)[1], p(a, v2, a0, pe)[1], atol=1e-3)


def test_paper_spatial_map_is_a_softmax_over_pixels_and_matches_mha():
    blk = _block(spatial_mode="paper")
    a, v, a0, pe = _inputs(t=2)
    q = (a + a0).reshape(2, 1, C)
    k = (v + pe).reshape(2, HW, C)
    with torch.no_grad():
        alpha = blk.spatial_map(q, k)  # [2, heads, HW]
        _, mha_w = blk.avs_attention(q, k, v.reshape(2, HW, C), need_weights=True, average_attn_weights=False)
    assert alpha.shape == (2, 8, HW)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 8))
    assert (alpha.amax(-1) > 1.5 / HW).all()  # not uniform: a real spatial map
    torch.testing.assert_close(alpha, mha_w.squeeze(2), rtol=1e-5, atol=1e-6)


def test_visual_spatial_update_uniform_in_reference_varying_in_paper():
    a, v, a0, pe = _inputs()
    with torch.no_grad():
        ref = _block(spatial_mode="reference").spatial_visual_update(a, v, a0, pe)
        pap = _block(spatial_mode="paper").spatial_visual_update(a, v, a0, pe)
    assert ref.shape == pap.shape == v.shape
    torch.testing.assert_close(ref, ref[:, :, :1].expand_as(ref))  # same vector at every pixel
    assert pap.std(dim=2).mean() > 1e-2  # varies across pixels


def _paper_oracle(blk: BAVABlock) -> PaperBlock:
    oracle = PaperBlock()
    oracle.load_state_dict(blk.state_dict(), strict=True)  # published key names on both sides
    return oracle.eval()


def test_paper_spatial_steps_equal_the_section_4_5_formulas():
    # REFERENCE §4.5, written out per frame and head in paper_reference.py (not from the block's own helpers)
    blk = _block(spatial_mode="paper")
    oracle = _paper_oracle(blk)
    a, v, a0, pe = _inputs(b=2, t=2)
    with torch.no_grad():
        got_a = blk.spatial_audio_update(a, v, a0, pe)
        got_v = blk.spatial_visual_update(a, v, a0, pe)
        for i in range(2):
            want_a = oracle.pooled_visual(a[i] + a0[i], v[i] + pe[0], v[i])
            want_v = oracle.spread_audio(a[i] + a0[i], v[i] + pe[0], a[i])
            torch.testing.assert_close(got_a[i], want_a, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_v[i], want_v, rtol=1e-5, atol=1e-5)
    assert want_v.std(dim=1).mean() > 1e-2  # the oracle's update does vary over the pixels


def test_paper_block_equals_the_section_4_5_oracle_clip_by_clip():
    blk = _block(spatial_mode="paper")
    oracle = _paper_oracle(blk)
    a, v, a0, pe = _inputs(b=2, t=3)
    with torch.no_grad():
        got_v, got_a = blk(a, v, a0, pe)
        for i in range(2):
            want_v, want_a = oracle(a[i], v[i], a0[i], pe[0])
            torch.testing.assert_close(got_v[i], want_v, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_a[i], want_a, rtol=1e-5, atol=1e-5)
        # the oracle tells the modes apart: the reference block with the same weights is not what it computes
        ref = _block(spatial_mode="reference")
        ref.load_state_dict(blk.state_dict())
        assert not torch.allclose(ref(a, v, a0, pe)[0][0], oracle(a[0], v[0], a0[0], pe[0])[0], atol=1e-3)


def test_one_way_block_keeps_audio_independent_of_the_image_but_not_vice_versa():
    blk = _block(bidirectional=False)
    a, v, a0, pe = _inputs()
    v2 = v + torch.randn_like(v)
    a2 = a + torch.randn_like(a)
    with torch.no_grad():
        torch.testing.assert_close(blk(a, v, a0, pe)[1], blk(a, v2, a0, pe)[1])
        assert not torch.allclose(blk(a, v, a0, pe)[0], blk(a2, v, a0, pe)[0], atol=1e-4)


def test_gradients_reach_every_parameter_in_both_modes():
    for mode in ("reference", "paper"):
        blk = _block(spatial_mode=mode).train()
        a, v, a0, pe = _inputs(b=2)
        out_v, out_a = blk(a, v, a0, pe)
        (out_v.square().mean() + out_a.square().mean()).backward()
        for name, p in blk.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{mode}: {name}"


@pytest.mark.parametrize("audio_side", ["keys", "query"])
def test_temporal_attention_equals_mha_on_audio_repeated_per_pixel(audio_side):
    # the published computation: repeat the audio token over the HW pixels, then nn.MultiheadAttention
    # with (L, N, E) = (frames, clips*pixels, C); ours projects the audio token once and broadcasts
    blk = _block()
    a, v, a0, pe = _inputs(b=2, t=4)
    b, t, n, c = v.shape
    q, k, val = (v + pe, a + a0, a) if audio_side == "keys" else (a + a0, v + pe, v)

    def seq(x):
        return x.expand(b, t, n, c).transpose(0, 1).reshape(t, b * n, c)

    with torch.no_grad():
        want = blk.avt_attention(seq(q), seq(k), seq(val), need_weights=False)[0]
        want = want.reshape(t, b, n, c).transpose(0, 1)
        got = blk.temporal_attention(q, k, val)
    assert got.shape == (b, t, n, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
