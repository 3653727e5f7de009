"""Frozen SAM image encoder: configs, random init, and exact equality with segment_anything's own path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stbava import thirdparty
from stbava.config import ConfigError
from stbava.encoders.image import (
    IMAGE_ENCODERS,
    PIXEL_MEAN,
    PIXEL_STD,
    build_image_encoder,
    encoder_kwargs,
    grid_size,
    image_size,
)
from stbava.testing import build_sam, write_fake_sam_checkpoint


def _frame(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A uint8-valued RGB frame [1,3,h,w] on the 0..255 scale, with some structure (gradient + block)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3)).astype(np.float32)
    img[: h // 2, : w // 3] = [250.0, 30.0, 20.0]
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def test_sizes_and_unknown_name() -> None:
    assert [image_size(n) for n in ("vit_h", "vit_l", "vit_b", "tiny")] == [1024, 1024, 1024, 256]
    assert [grid_size(n) for n in ("vit_h", "vit_l", "vit_b", "tiny")] == [64, 64, 64, 16]
    with pytest.raises(ConfigError, match="vit_h, vit_l, vit_b, tiny"):
        image_size("vit_x")
    with pytest.raises(ConfigError):
        build_image_encoder("huge")


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_vit_configs_match_segment_anything_builders(name: str) -> None:
    # Built on the meta device: only names and shapes, no memory, no init time.
    registry = thirdparty.sam_build().sam_model_registry
    vit = thirdparty.sam_modeling().ImageEncoderViT
    with torch.device("meta"):
        official = registry[name]().image_encoder
        ours = vit(**encoder_kwargs(name))
    a = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert a == b
    assert [blk.window_size for blk in official.blocks] == [blk.window_size for blk in ours.blocks]
    assert official.blocks[0].norm1.eps == ours.blocks[0].norm1.eps == 1e-6


def test_tiny_random_init_is_seeded_frozen_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    before = torch.rand(3)
    torch.manual_seed(1234)
    enc = build_image_encoder("tiny", seed=0)
    assert torch.equal(torch.rand(3), before), "building must not consume the global RNG"
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert IMAGE_ENCODERS["tiny"]["depth"] == len(enc.encoder.blocks) == 2

    x = _frame(256, 256)
    y = enc(x)
    assert y.shape == (1, 256, 16, 16) and y.dtype == torch.float32
    same = build_image_encoder("tiny", seed=0)
    other = build_image_encoder("tiny", seed=1)
    assert torch.equal(same(x), y)
    assert (other(x) - y).abs().max() > 1e-2
    # Different frames give different embeddings (the random encoder is informative).
    y2 = enc(_frame(256, 256, seed=5))
    assert (y2 - y).abs().mean() > 1e-2


def test_batched_forward_equals_per_frame() -> None:
    enc = build_image_encoder("tiny")
    x = torch.cat([_frame(256, 256, s) for s in range(3)])
    whole = enc(x)
    per = torch.cat([enc(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, per, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(256, 256), (192, 256), (256, 144)])
def test_matches_sam_preprocess_and_image_encoder_exactly(tmp_path, hw) -> None:
    ckpt = write_fake_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny", seed=3)
    # segment_anything's own path: a Sam built the same way, loaded strictly from the official-format file.
    sam = build_sam("tiny", seed=99)
    sam.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=True)
    ours = build_image_encoder("tiny", checkpoint=ckpt)

    frame = _frame(*hw, seed=7)
    with torch.no_grad():
        expected = sam.image_encoder(sam.preprocess(frame[0])[None])
        got = ours(frame)
    assert got.shape == (1, 256, 16, 16)
    assert torch.equal(got, expected)
    # The preprocessing itself equals Sam.preprocess bit for bit (normalise, then pad with zeros).
    assert torch.equal(ours.preprocess(frame)[0], sam.preprocess(frame[0]))
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    torch.testing.assert_close(ours.preprocess(frame)[0, :, : hw[0], : hw[1]], (frame[0] - mean) / std)
    assert ours.preprocess(frame)[0, :, hw[0] :, :].abs().sum() == 0


def test_rejects_oversized_or_malformed_frames() -> None:
    enc = build_image_encoder("tiny")
    with pytest.raises(ValueError, match="exceed"):
        enc(torch.zeros(1, 3, 300, 200))
    with pytest.raises(ValueError, match=r"\[N,3,h,w\]"):
        enc(torch.zeros(3, 256, 256))
