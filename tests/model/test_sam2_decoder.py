"""The fusion model on SAM 2: its own MaskDecoder (weights from the checkpoint) gives the logits of
``SAM2Base._forward_sam_heads`` on the same features, and the fusion contract reaches it as SAM 2 passes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stbava.encoders.hiera import decoder_geometry, sam2_decoder_state
from stbava.feature_levels import pack_levels
from stbava.model.avs_model import AVSModel
from stbava.model.build import load_sam_decoder
from stbava.testing import build_sam2_by_hand

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, G = 3, 16  # frames, sam2_mini grid


@pytest.fixture(scope="module")
def reference():
    ref = build_sam2_by_hand(seed=4)
    with torch.no_grad():  # every frame scored as holding an object, so _forward_sam_heads does not gate it
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(50.0)
    return ref


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(N, 256, G, G, generator=g), torch.randn(N, 32, 4 * G, 4 * G, generator=g),
            torch.randn(N, 64, 2 * G, 2 * G, generator=g))


def _model(reference, fusion: str = "none", high_res: bool = True) -> AVSModel:
    torch.manual_seed(0)
    model = AVSModel(fusion=fusion, **decoder_geometry("sam2_mini", high_res)).eval()
    load_sam_decoder(model, sam2_decoder_state(reference.state_dict(), "reference"))
    return model


def test_decoder_equals_forward_sam_heads_without_prompts(reference, features) -> None:
    embed, s0, s1 = features
    model = _model(reference)
    with torch.no_grad():
        low_ref, high_ref, _, _, _, _, obj = reference._forward_sam_heads(
            embed, high_res_features=[s0, s1], multimask_output=True)
        assert (obj > 0).all()
        # "no prompts" as _forward_sam_heads encodes them: one padding point, no mask (no_mask_embed)
        sparse, dense = reference.sam_prompt_encoder(
            points=(torch.zeros(N, 1, 2), -torch.ones(N, 1, dtype=torch.int32)), boxes=None, masks=None)
        low = model.decode(embed + dense, sparse, [s0, s1])  # contract: dense is the whole visual src
        logits = model.upsample(low)
    torch.testing.assert_close(low, low_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, F.interpolate(high_ref, (224, 224), mode="bilinear").sum(1),
                               rtol=1e-4, atol=1e-4)
    assert low.shape == (N, 3, 4 * G, 4 * G) and low.std() > 0.01


def test_none_fusion_reaches_sam2_decoder_as_published(reference, features) -> None:
    embed, s0, s1 = features
    model = _model(reference)
    audio = torch.randn(1, N, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(pack_levels(embed, s0, s1)[None].half(), audio)[0]  # the cache's float16
        e, h0, h1 = (x.half().float() for x in features)
        w, b = model.audio_embed_layer.weight, model.audio_embed_layer.bias
        a0 = F.normalize(audio[0] @ w.T + b, dim=-1)
        low, *_ = reference.sam_mask_decoder(
            image_embeddings=e, image_pe=reference.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=torch.stack([a0, a0], 1), dense_prompt_embeddings=torch.zeros_like(e),
            multimask_output=True, repeat_image=False, high_res_features=[h0, h1])
    want = F.interpolate(F.interpolate(low, (256, 256), mode="bilinear"), (224, 224), mode="bilinear").sum(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_high_res_off_and_wrong_features(reference, features) -> None:
    embed, s0, s1 = features
    off = _model(reference, high_res=False)  # decoder loads without conv_s0 / conv_s1
    assert not any(k.startswith("mask_decoder.conv_s") for k in off.state_dict())
    audio = torch.zeros(1, N, 128)
    with torch.no_grad():
        assert off(embed[None], audio).shape == (1, N, 224, 224)
        with pytest.raises(ValueError, match="high-res levels off"):
            off(pack_levels(embed, s0, s1)[None], audio)
        with pytest.raises(ValueError, match="high-res levels on"):
            _model(reference)(embed[None], audio)  # a SAM-shaped [.,256,g,g] embedding without the levels
