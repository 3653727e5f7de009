"""AVSModel: shapes/dtypes, batched decoder == per-frame loop, clip independence, ablations, SAM init."""

from __future__ import annotations

import copy

import pytest
import torch

from stbava.config import load_config
from stbava.encoders.checkpoints import PE_KEY, sam_decoder_state
from stbava.model.avs_model import AVSModel
from stbava.model.build import build_model, model_kwargs
from stbava.state_dict import CheckpointError
from stbava.testing import build_sam

G, IMG = 16, 256  # tiny encoder grid / input size
TINY = {"grid": G, "img_size": IMG}


def _model(seed: int = 0, **kw) -> AVSModel:
    torch.manual_seed(seed)
    args = {"grid": G, "img_size": IMG, "depth": 2, **kw}
    return AVSModel(**args).eval()


def _inputs(b: int = 2, t: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 256, G, G, generator=g), torch.rand(b, t, 128, generator=g) * 2


def test_shapes_and_dtype():
    m = _model()
    img, aud = _inputs()
    with torch.no_grad():
        out = m(img, aud)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def _float64_published_route(m: AVSModel, img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
    """Logits of ``m`` computed in float64 the published way, around ``forward``/``fuse``/``_check``.

    Per frame: A0 = normalize(W a + b), the blocks on channels-last tokens, then SAM's decoder on that frame's
    embedding E with dense prompt V and sparse prompt (A_L + A0) twice, bilinear to img_size then 224, summed.
    img ``[B,T,256,G,G]`` and aud ``[B,T,128]`` are used exactly as given (cast to float64 without rounding).
    """
    m64 = copy.deepcopy(m).double()
    pe = m64.pe_layer.float()((G, G)).double()[None]  # SAM builds the PE grid in float32; same PE in every run
    img, aud = img.double(), aud.double()
    b, t = img.shape[:2]
    out = torch.empty(b, t, 224, 224, dtype=torch.float64)
    for bi in range(b):
        v0 = img[bi].flatten(2).transpose(1, 2)[None]  # [1,T,HW,C]
        a0 = torch.nn.functional.normalize(m64.audio_embed_layer(aud[bi]), dim=-1)[None, :, None]  # [1,T,1,C]
        v, a = v0, a0
        for layer in m64.layers:
            v, a = layer(a, v, a0, pe.flatten(2).transpose(1, 2)[None])
        for ti in range(t):
            sparse = (a + a0)[0, ti].expand(1, 2, 256)
            dense = v[0, ti].T.reshape(256, G, G)
            low, _ = m64.mask_decoder(img[bi, ti][None], pe, sparse, dense, multimask_output=True)
            up = torch.nn.functional.interpolate(low, (IMG, IMG), mode="bilinear", align_corners=False)
            out[bi, ti] = torch.nn.functional.interpolate(up, (224, 224), mode="bilinear", align_corners=False)[0].sum(0)
    return out


def test_float16_cached_embeddings_cost_only_their_storage_rounding():
    # Cached embeddings are float16. The model must read them as the exact fp16 values and compute in float32:
    # then its logits equal an independent float64 run on those same values up to float32 arithmetic noise,
    # and the only difference from the fp32 embeddings is the storage rounding. A model that rounded the
    # embeddings again (e.g. via bf16) or kept reduced precision inside lands at the rounding-error level,
    # above the tolerance.
    m = _model()
    img, aud = _inputs()
    img16 = img.half()
    # storage error, by hand: fp16 round-to-nearest (10-bit mantissa) errs by at most 2^-11 relative;
    # below 2^-14 (subnormals, spacing 2^-24) by at most 2^-25 absolute
    assert ((img16.double() - img.double()).abs() <= 2.0**-11 * img.double().abs() + 2.0**-25).all()
    with torch.no_grad():
        out16 = m(img16, aud)
        out32 = m(img, aud)
        ref16 = _float64_published_route(m, img16, aud)  # the stored fp16 values, float64 arithmetic
        ref32 = _float64_published_route(m, img, aud)
    assert out16.dtype == torch.float32
    fp32_noise = (out32.double() - ref32).abs().max().item()  # what float32 arithmetic costs on this model
    assert fp32_noise < 2e-5, fp32_noise  # float32 embeddings: float32 logits (measured ~5e-6)
    tol = 4 * fp32_noise + 1e-6
    err16 = (out16.double() - ref16).abs().max().item()
    assert err16 <= tol, (err16, tol)
    storage = (ref16 - ref32).abs().max().item()  # the logit change caused by the fp16 rounding alone
    assert storage > 3 * tol, (storage, tol)  # so a second rounding of that size could not pass the check above
    assert storage < 0.01 * ref32.abs().max().item()  # and fp16 storage is a small perturbation of the logits


def test_bad_shapes_are_clear_errors():
    m = _model()
    img, aud = _inputs()
    with pytest.raises(ValueError, match="another encoder"):
        m(torch.zeros(2, 3, 256, 64, 64), aud)
    with pytest.raises(ValueError, match="audio embeddings"):
        m(img, aud[:, :2])


def test_batched_decoder_equals_published_per_frame_loop():
    m = _model()
    img, aud = _inputs(b=2, t=3)
    with torch.no_grad():
        out = m(img, aud)
        fo = m.fuse(img, aud)
        pe = m.dense_pe(torch.float32)
        frames = []
        for bi in range(2):
            for ti in range(3):
                dense = fo.V[bi, ti].T.reshape(256, G, G)
                sparse = fo.A[bi, ti][None, None].repeat(1, 2, 1)
                low, _ = m.mask_decoder(img[bi, ti][None], pe, sparse, dense, multimask_output=True)
                frames.append(m.upsample(low)[0])
    loop = torch.stack(frames).reshape(2, 3, 224, 224)
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-5)


def test_clip_output_unchanged_when_other_clips_join_the_batch():
    m = _model()
    img, aud = _inputs(b=3)
    with torch.no_grad():
        together = m(img, aud)
        alone = m(img[2:], aud[2:])
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-5)


def test_fusion_outputs_and_audio_normalisation():
    m = _model()
    img, aud = _inputs()
    with torch.no_grad():
        fo = m.fuse(img, aud)
    assert fo.V0.shape == fo.V.shape == (2, 3, G * G, 256)
    assert fo.A0.shape == fo.A.shape == (2, 3, 256)
    torch.testing.assert_close(fo.A0.norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(fo.V0[0, 0, :, 5], img[0, 0, 5].flatten())  # channels-last tokens


def test_audio_changes_the_masks_and_gradients_flow():
    m = _model().train()
    img, aud = _inputs(b=1)
    out = m(img, aud)
    out.sigmoid().mean().backward()
    assert m.audio_embed_layer.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.layers.parameters())
    m.eval()
    with torch.no_grad():
        assert not torch.allclose(m(img, aud), m(img, aud.flip(1)), atol=1e-4)


def test_decoder_only_baseline():
    torch.manual_seed(0)
    m = AVSModel(fusion="none", **TINY).eval()
    assert not hasattr(m, "layers") and not m.supports_fuse
    img, aud = _inputs(b=1, t=2)
    with torch.no_grad():
        out = m(img, aud)
        a0 = torch.nn.functional.normalize(aud[0] @ m.audio_embed_layer.weight.T + m.audio_embed_layer.bias, dim=-1)
        for t in range(2):
            sparse = a0[t][None, None].repeat(1, 2, 1)
            low, _ = m.mask_decoder(img[0, t][None], m.dense_pe(torch.float32), sparse,
                                    torch.zeros(1, 256, G, G), multimask_output=True)
            torch.testing.assert_close(out[0, t], m.upsample(low)[0], rtol=1e-5, atol=1e-5)


def test_depth_zero_is_the_published_zero_layer_model():
    m = _model(depth=0)
    img, aud = _inputs(b=1, t=1)
    with torch.no_grad():
        fo = m.fuse(img, aud)
    torch.testing.assert_close(fo.A, 2 * fo.A0)  # A_L + A0 with A_L = A0
    torch.testing.assert_close(fo.V, fo.V0)


@pytest.mark.parametrize("overrides",
                         [{"spatial_mode": "paper"}, {"temporal": False}, {"bidirectional": False}])
def test_ablations_run_end_to_end(overrides):
    m = _model(**overrides)
    img, aud = _inputs(b=1, t=2)
    out = m(img, aud)
    assert out.shape == (1, 2, 224, 224)
    out.mean().backward()


def test_build_model_from_config_and_parameter_counts():
    cfg = load_config(None, {"frames": 3, "model": {"depth": 3}})
    kw = model_kwargs(cfg, **TINY)
    assert (kw["grid"], kw["img_size"]) == (16, 256) and AVSModel(**kw).mask_size == 224
    m = build_model(cfg, **TINY)
    def count(mod):
        return sum(p.numel() for p in mod.parameters())

    assert count(m.audio_embed_layer) == 33_024
    assert count(m.mask_decoder) == 4_058_340
    assert count(m.layers) == 3 * 1_056_768
    top = {k.split(".")[0] for k in m.state_dict()}
    assert top == {"audio_embed_layer", "layers", "pe_layer", "mask_decoder"}
    base = build_model(load_config(None, {"model": {"fusion": False}}), **TINY)  # the former boolean
    assert {k.split(".")[0] for k in base.state_dict()} == {"audio_embed_layer", "pe_layer", "mask_decoder"}


def test_build_model_starts_decoder_and_pe_from_sam():
    sam_sd = build_sam("tiny", seed=3).state_dict()
    cfg = load_config(None, {"model": {"depth": 1}})
    m = build_model(cfg, sam_decoder_state(sam_sd), **TINY)
    for k, v in m.mask_decoder.state_dict().items():
        assert torch.equal(v, sam_sd[f"mask_decoder.{k}"]), k
    assert torch.equal(m.pe_layer.positional_encoding_gaussian_matrix, sam_sd[PE_KEY])
    # same PE grid as SAM's prompt encoder uses for this embedding size
    sam = build_sam("tiny", seed=3)
    torch.testing.assert_close(m.dense_pe(torch.float32), sam.prompt_encoder.get_dense_pe())
    # a full SAM state dict works too (image / prompt encoder parts are ignored)
    build_model(cfg, sam_sd, **TINY)


def test_build_model_rejects_incomplete_sam_state():
    sam_sd = sam_decoder_state(build_sam("tiny").state_dict())
    cfg = load_config(None, {"model": {"depth": 1}})
    broken = {k: v for k, v in sam_sd.items() if k != "mask_decoder.iou_token.weight"}
    with pytest.raises(CheckpointError, match="iou_token"):
        build_model(cfg, broken, **TINY)
    no_pe = {k: v for k, v in sam_sd.items() if k != PE_KEY}
    with pytest.raises(CheckpointError, match="positional_encoding_gaussian_matrix"):
        build_model(cfg, no_pe, **TINY)


def test_centering_the_audio_projection_makes_a0_encode_the_difference_from_the_mean_sound():
    m = _model()
    g = torch.Generator().manual_seed(5)
    common = 3.0 + torch.rand(128, generator=g)  # VGGish-like: a large component every sound shares
    sounds = common + 0.3 * torch.randn(6, 128, generator=g)
    w_before, b_before = m.audio_embed_layer.weight.clone(), m.audio_embed_layer.bias.clone()

    def a0(x):
        return torch.nn.functional.normalize(m.audio_embed_layer(x), dim=-1)

    with torch.no_grad():
        cos_before = (a0(sounds) @ a0(sounds).T)[~torch.eye(6, dtype=torch.bool)].mean()
        m.center_audio_projection(sounds.mean(0))
        assert torch.equal(m.audio_embed_layer.weight, w_before)  # only the bias moves
        # = projecting (x - mean) with the original weights: the mean sound lands on the original small bias
        torch.testing.assert_close(m.audio_embed_layer(sounds), (sounds - sounds.mean(0)) @ w_before.T + b_before)
        cos_after = (a0(sounds) @ a0(sounds).T)[~torch.eye(6, dtype=torch.bool)].mean()
    assert cos_before > 0.8 and cos_after < 0.2, (cos_before, cos_after)
