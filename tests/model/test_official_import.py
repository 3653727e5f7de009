"""Published ST-BAVA weights: strict conversion and logits equal to the published computation."""

from __future__ import annotations

import pytest
import torch
from published_reference import PublishedDecoder, published_file_state

from stbava.config import load_config
from stbava.model.build import build_model
from stbava.model.official import convert_official_adapters, convert_official_state
from stbava.state_dict import CheckpointError

DEPTH, G, IMG, T = 2, 16, 256, 5  # tiny grid / input; T = 5 frames as published
TINY_DIM, TINY_DEPTH = 64, 2  # tiny encoder width / blocks


def _cfg(**model):
    return load_config(None, {"frames": T, "encoder": {"name": "tiny"}, "model": {"depth": DEPTH, **model}})


@pytest.fixture(scope="module")
def published():
    sd = published_file_state(DEPTH, G, IMG, TINY_DIM, TINY_DEPTH, seed=0)
    ref = PublishedDecoder(DEPTH, G, IMG)
    ref.load_state_dict({k: v for k, v in sd.items() if not k.startswith("image_encoder.")}, strict=True)
    return sd, ref.eval()


def _clip(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, 256, G, G, generator=g), torch.rand(T, 128, generator=g) * 2


def test_imported_model_reproduces_published_logits(published):
    sd, ref = published
    model = build_model(_cfg(), grid=G, img_size=IMG)
    model.load_state_dict(convert_official_state(sd, _cfg(), grid=G, img_size=IMG), strict=True)
    model.eval()
    img, aud = _clip(1)
    with torch.no_grad():
        want = ref.forward_audio(img, aud[:, None])  # [T,1,1,224,224]
        got = model(img[None], aud[None])  # [1,T,224,224]
    assert want.shape == (T, 1, 1, 224, 224)
    want = want[:, 0, 0]
    assert want.abs().max() > 1.0  # non-trivial logits
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)


def test_batched_clips_equal_published_run_clip_by_clip(published):
    # The published code flattens B*T and would attend across clips; ours keeps each clip separate.
    sd, ref = published
    model = build_model(_cfg(), grid=G, img_size=IMG)
    model.load_state_dict(convert_official_state(sd, _cfg(), grid=G, img_size=IMG))
    model.eval()
    clips = [_clip(s) for s in (2, 3)]
    with torch.no_grad():
        got = model(torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips]))
        for i, (img, aud) in enumerate(clips):
            want = ref.forward_audio(img, aud[:, None])[:, 0, 0]
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-5)


def test_paper_mode_imports_the_same_weights_but_computes_differently(published):
    sd, ref = published
    model = build_model(_cfg(spatial_mode="paper"), grid=G, img_size=IMG)
    model.load_state_dict(convert_official_state(sd, _cfg(spatial_mode="paper"), grid=G, img_size=IMG))
    model.eval()
    img, aud = _clip(1)
    with torch.no_grad():
        published_logits = ref.forward_audio(img, aud[:, None])[:, 0, 0]
        assert not torch.allclose(model(img[None], aud[None])[0], published_logits,
                                  atol=1e-3)


def test_converted_keys_are_exactly_the_model_keys(published):
    sd, _ = published
    out = convert_official_state(sd, _cfg(), grid=G, img_size=IMG)
    assert set(out) == set(build_model(_cfg(), grid=G, img_size=IMG).state_dict())
    assert not any(k.startswith(("image_encoder.", "prompt_encoder.")) for k in out)
    key = "layers.1.avt_attention.in_proj_weight"
    assert torch.equal(out[key], sd[key])


def test_missing_unexpected_and_misshaped_keys_are_listed(published):
    sd, _ = published
    broken = dict(sd)
    del broken["layers.0.norm3_1.weight"]
    del broken["mask_decoder.iou_token.weight"]
    broken["layers.0.extra_gate.weight"] = torch.zeros(3)
    broken["audio_embed_layer.weight"] = torch.zeros(256, 64)
    with pytest.raises(CheckpointError) as err:
        convert_official_state(broken, _cfg(), source="ckpt.pth", grid=G, img_size=IMG)
    msg = str(err.value)
    assert "ckpt.pth" in msg
    assert "2 missing keys" in msg
    assert "layers.0.norm3_1.weight" in msg and "mask_decoder.iou_token.weight" in msg
    assert "1 unexpected keys (layers.0.extra_gate.weight)" in msg
    assert "audio_embed_layer.weight: file [256, 64] vs model [256, 128]" in msg


def test_depth_mismatch_names_the_right_depth(published):
    sd, _ = published
    with pytest.raises(CheckpointError, match="set model.depth=2"):
        convert_official_state(sd, _cfg(depth=3), grid=G, img_size=IMG)


def test_ablated_config_is_refused(published):
    sd, _ = published
    with pytest.raises(CheckpointError, match="full ST-BAVA"):
        convert_official_state(sd, _cfg(temporal=False), grid=G, img_size=IMG)


def test_adapters_are_converted_to_prompt_generator_keys(published):
    sd, _ = published
    from stbava.encoders.image import build_image_encoder
    from stbava.model.adapters import AdaptedImageEncoder

    ad = convert_official_adapters(sd, _cfg(), width=TINY_DIM, blocks=TINY_DEPTH)
    assert set(ad) == {f"prompt_generator.lightweight_mlp_{i}.0.{p}" for i in range(TINY_DEPTH)
                       for p in ("weight", "bias")} | {"prompt_generator.shared_mlp.weight",
                                                       "prompt_generator.shared_mlp.bias"}
    enc = AdaptedImageEncoder(build_image_encoder("tiny"), hidden=512)
    enc.prompt_generator.load_state_dict({k.removeprefix("prompt_generator."): v for k, v in ad.items()})
    shared = sd["image_encoder.prompt_generator.shared_mlp.weight"]
    assert torch.equal(enc.prompt_generator.shared_mlp.weight, shared)
    # no adapters in the file -> nothing to convert
    plain = {k: v for k, v in sd.items() if "prompt_generator" not in k}
    assert convert_official_adapters(plain, _cfg(), width=TINY_DIM, blocks=TINY_DEPTH) == {}
    # adapters of another encoder (vit_h width/depth expected) -> listed mismatch
    with pytest.raises(CheckpointError, match="--encoder vit_h"):
        convert_official_adapters(sd, load_config(None, {"encoder": {"name": "vit_h"}}), width=1280, blocks=32)
