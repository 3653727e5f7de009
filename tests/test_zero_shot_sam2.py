"""Zero-shot SAM 2 equals SAM 2's prompt encoder + mask decoder run by hand on the same prompts and features,
the way SAM2ImagePredictor.predict passes them (boxes as corner points 2/3, high-res levels, best predicted IoU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stbava.encoders.hiera import decoder_geometry
from stbava.feature_levels import pack_levels
from stbava.testing import build_sam2_by_hand
from stbava.zero_shot.prompts import prompts_from_mask
from stbava.zero_shot.sam2 import build_zero_shot_sam2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _by_hand(ref, embed, levels, coords, labels) -> torch.Tensor:
    sparse, dense = ref.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    k = sparse.shape[0]
    low, iou, _, _ = ref.sam_mask_decoder(image_embeddings=embed, image_pe=ref.sam_prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True, repeat_image=k > 1, high_res_features=levels)
    best = low[torch.arange(k), iou.argmax(1)][:, None]
    up = F.interpolate(F.interpolate(best, (256, 256), mode="bilinear"), (224, 224), mode="bilinear")
    return up[:, 0].amax(0)


def test_zero_shot_sam2_equals_sam2_decoder_by_hand(tmp_path) -> None:
    ref = build_sam2_by_hand(seed=6)
    ckpt = tmp_path / "sam2_mini.pt"
    torch.save({"model": ref.state_dict()}, ckpt)  # the official layout (stbava.testing.write_fake_sam2_checkpoint)
    model, weights = build_zero_shot_sam2(ckpt, **decoder_geometry("sam2_mini", True), seed=1)
    assert "sha256=" in weights
    g = torch.Generator().manual_seed(0)
    embed, s0, s1 = torch.randn(1, 256, 16, 16, generator=g), torch.randn(1, 32, 64, 64, generator=g), \
        torch.randn(1, 64, 32, 32, generator=g)
    mask = np.zeros((224, 224), bool)
    mask[20:90, 30:120] = True
    mask[150:200, 140:210] = True
    scale = 256 / 224  # the whole frame squashed to SAM 2's square input
    with torch.no_grad():
        for prompt, kind in (("point3", "point"), ("box3", "box")):
            got = model.frame_logits(pack_levels(embed, s0, s1)[0].half(), mask, prompt, seed=3)
            found = prompts_from_mask(mask, kind, 3, 3)
            if kind == "point":
                coords = torch.tensor(found * scale, dtype=torch.float32)[None]
                labels = torch.ones(1, len(found), dtype=torch.int)
            else:
                coords = torch.tensor(found.reshape(-1, 2, 2) * scale, dtype=torch.float32)
                labels = torch.tensor([[2, 3]] * len(found), dtype=torch.int)
            e, h0, h1 = (x.half().float() for x in (embed, s0, s1))
            want = _by_hand(ref, e, [h0, h1], coords, labels)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert got.std() > 0.01
    assert (model.frame_logits(pack_levels(embed, s0, s1)[0], np.zeros((224, 224), bool), "box1", 0) < -1e3).all()
