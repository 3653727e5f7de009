"""SDPA attention for SAM's encoder: same function as SAM's own attention (rel-pos bias included)."""

from __future__ import annotations

import copy

import torch

from stbava import thirdparty
from stbava.encoders.fast_attention import disable_sdpa, enable_sdpa, rel_pos_bias, sdpa_enabled
from stbava.encoders.image import build_image_encoder


def _randomise_rel_pos(module: torch.nn.Module, seed: int = 0) -> None:
    """SAM zero-initialises the rel-pos tables; a zero bias would not test the mask at all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_rel_pos_bias_equals_sams_decomposed_bias():
    ie = thirdparty.sam_modeling().image_encoder
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 5 * 7, 8, generator=g)
    rh, rw = torch.randn(9, 8, generator=g), torch.randn(13, 8, generator=g)
    zero = torch.zeros(6, 35, 35)
    want = ie.add_decomposed_rel_pos(zero, q, rh, rw, (5, 7), (5, 7))
    torch.testing.assert_close(rel_pos_bias(q, rh, rw, (5, 7)), want, rtol=0, atol=1e-6)


def test_attention_module_matches_sam_windowed_and_global():
    ie = thirdparty.sam_modeling().image_encoder
    for size in [(8, 8), (6, 10)]:  # a window and a non-square grid
        attn = ie.Attention(64, num_heads=4, use_rel_pos=True, input_size=size).eval()
        _randomise_rel_pos(attn, seed=size[1])
        x = torch.randn(3, *size, 64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = attn(x)
            assert enable_sdpa(attn) == 1
            got = attn(x)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_tiny_encoder_outputs_match_to_1e5_and_toggle_cleanly():
    enc = build_image_encoder("tiny", seed=3)
    _randomise_rel_pos(enc)
    sd_before = {k: v.clone() for k, v in enc.state_dict().items()}
    frames = torch.rand(2, 3, 256, 192, generator=torch.Generator().manual_seed(4)) * 255  # padded to 256
    with torch.inference_mode():
        ref = enc(frames)
        assert not sdpa_enabled(enc)
        assert enable_sdpa(enc) == 2 and enable_sdpa(enc) == 2  # idempotent
        assert sdpa_enabled(enc)
        got = enc(frames)
        clone = copy.deepcopy(enc)  # still a plain module (deepcopy, state_dict unchanged)
        got_clone = clone(frames)
        assert disable_sdpa(enc) == 2 and not sdpa_enabled(enc)
        back = enc(frames)
    assert got.shape == (2, 256, 16, 16)
    assert (ref - got).abs().max().item() < 1e-5
    torch.testing.assert_close(got_clone, got, rtol=0, atol=0)
    torch.testing.assert_close(back, ref, rtol=0, atol=0)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in sd_before.items())
    assert set(sd_before) == set(enc.state_dict())


def test_sdpa_under_bf16_autocast_stays_close():
    """The mask follows q's dtype, so autocast (GPU extraction with --amp bf16) runs; values stay close."""
    enc = build_image_encoder("tiny", seed=5)
    _randomise_rel_pos(enc, seed=5)
    frames = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(6)) * 255
    with torch.inference_mode():
        ref = enc(frames)
        enable_sdpa(enc)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = enc(frames).float()
    rel = (got - ref).norm() / ref.norm()
    assert rel.item() < 0.05


def test_extraction_with_sdpa_matches_without(tmp_path):
    from stbava.cache import open_cache
    from stbava.config import EncoderConfig
    from stbava.data.synthetic import write_synthetic
    from stbava.pipeline.extract.features import run_extraction

    root = write_synthetic(tmp_path / "syn", "ms3", {"test": 1}, seed=1, frames=2)
    out = {}
    for sdpa in (False, True):
        path = tmp_path / f"c{sdpa}.zarr"
        run_extraction(root, "ms3", path, "zarr", EncoderConfig(), device="cpu", frames=2, progress=False, sdpa=sdpa)
        reader = open_cache(path)
        assert reader.fingerprint["numerics"]["sdpa"] is sdpa  # recorded where a resume compares it
        out[sdpa] = reader.image_embeddings(reader.clip_ids("test")[0]).astype("float32")
    assert abs(out[True] - out[False]).max() < 2e-3  # float16 storage of the same values
