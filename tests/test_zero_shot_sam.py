"""Zero-shot SAM on a cached frame: logits equal SAM's own prompt encoder + mask decoder run by hand on the same
embedding with hand-computed prompts (official-format checkpoint of a random tiny SAM); empty masks; seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stbava.testing import build_sam, write_fake_sam_checkpoint
from stbava.zero_shot.sam import EMPTY_LOGIT, build_zero_shot_sam, frame_seed

G, IMG = 16, 256  # the tiny encoder: 16x16 embeddings of a 256x256 input
S = IMG / 224  # ResizeLongestSide of a square 224 frame: both axes scale by 256/224


def _mask() -> np.ndarray:
    m = np.zeros((224, 224), bool)
    m[20:80, 30:110] = True  # 60 x 80 px: centre of mass (row 49.5, col 69.5), box cols 30-109, rows 20-79
    m[150:170, 150:180] = True  # 20 x 30 px: centre (159.5, 164.5), box cols 150-179, rows 150-169
    m[200:204, 10:14] = True  # 4 x 4 px: centre (201.5, 11.5), box cols 10-13, rows 200-203
    m[5:7, 200:202] = True  # 2 x 2 px, the fourth region: never prompted (3 at most)
    return m


POINTS = [(69.5, 49.5), (164.5, 159.5), (11.5, 201.5)]  # (x, y), largest first
BOXES = [(30, 20, 109, 79), (150, 150, 179, 169), (10, 200, 13, 203)]  # inclusive XYXY


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_fake_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth", "tiny", seed=3)
    model, weights = build_zero_shot_sam(path, grid=G, img_size=IMG, seed=99)
    emb = torch.randn(256, G, G, generator=torch.Generator().manual_seed(4)).half()  # cached embeddings: fp16
    return model, weights, build_sam("tiny", seed=3), emb


def _by_hand(sam, emb: torch.Tensor, points=None, box=None) -> torch.Tensor:
    """One prompt set through ``Sam.prompt_encoder`` + ``Sam.mask_decoder``, best of 3 by IoU, resized to 224."""
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb.float()[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
        best = low[0, int(iou[0].argmax())][None, None]
        up = F.interpolate(best, (IMG, IMG), mode="bilinear", align_corners=False)
        return F.interpolate(up, (224, 224), mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize("n", [1, 3])
def test_points_are_one_prompt_set_of_sam(setup, n):
    model, _, sam, emb = setup
    coords = torch.tensor([[(x * S, y * S) for x, y in POINTS[:n]]])
    want = _by_hand(sam, emb, points=(coords, torch.ones(1, n, dtype=torch.int)))
    got = model.frame_logits(emb, _mask(), f"point{n}", seed=0)
    assert got.shape == (224, 224) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3])
def test_boxes_are_one_prompt_set_each_and_their_union(setup, n):
    model, _, sam, emb = setup
    per_box = [_by_hand(sam, emb, box=torch.tensor([[v * S for v in b]])) for b in BOXES[:n]]
    want = torch.stack(per_box).amax(dim=0)
    torch.testing.assert_close(model.frame_logits(emb, _mask(), f"box{n}", seed=0), want, rtol=1e-5, atol=1e-5)
    if n == 3:  # the union really combines different masks
        assert not torch.allclose(per_box[0], want)


def test_the_checkpoint_weights_are_used_and_recorded(setup):
    model, weights, sam, _ = setup
    for part in ("prompt_encoder", "mask_decoder"):
        theirs = getattr(sam, part).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in getattr(model, part).state_dict().items())
    assert "sam_tiny.pth sha256=" in weights


def test_empty_mask_gives_no_prompt_and_an_empty_prediction(setup):
    model, _, _, emb = setup
    out = model.frame_logits(emb, np.zeros((224, 224), bool), "point3", seed=0)
    assert torch.all(out == EMPTY_LOGIT) and torch.sigmoid(out).max() == 0


def test_random_init_is_seeded_and_recorded():
    a, wa = build_zero_shot_sam(None, grid=G, img_size=IMG, seed=5)
    b, _ = build_zero_shot_sam(None, grid=G, img_size=IMG, seed=5)
    c, _ = build_zero_shot_sam(None, grid=G, img_size=IMG, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["mask_decoder.iou_token.weight"], sc["mask_decoder.iou_token.weight"])
    assert wa.startswith("random-init seed=5")


def test_frame_seeds_depend_on_seed_clip_and_frame_only():
    seeds = {frame_seed(s, c, k) for s in (0, 1) for c in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8 and frame_seed(0, "a", 1) == frame_seed(0, "a", 1)


def test_a_non_square_frame_is_prompted_and_cropped_like_sam(setup):
    """A 320x180 frame (tiny encoder: resized to 256x144, padded below): the mask's points go to the frame
    (x * 320/224, y * 180/224) and then scale by 256/320 (ResizeLongestSide), and the logits drop the padding
    before the resize to 224, as ``Sam.postprocess_masks(masks, (144, 256), (224, 224))`` does. The points were
    scaled by 256/224 on both axes and the padded square was squashed to 224 (fails on that code)."""
    model, _, sam, emb = setup
    h, w = 180, 320
    nh, nw = int(h * IMG / w + 0.5), IMG  # 144, 256 by hand
    coords = torch.tensor([[(x * w / 224 * nw / w, y * h / 224 * nh / h) for x, y in POINTS[:3]]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(1, 3, dtype=torch.int)), boxes=None, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb.float()[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
        best = low[:, int(iou[0].argmax())][:, None]
        want = sam.postprocess_masks(best, (nh, nw), (224, 224))[0, 0]
    got = model.frame_logits(emb, _mask(), "point3", seed=0, frame_hw=(h, w))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, model.frame_logits(emb, _mask(), "point3", seed=0), atol=1e-3)


def _approx(value: float) -> object:
    return pytest.approx(value, abs=1e-6)


def _frames(*objects: bool) -> torch.Tensor:
    """GT ``[V,224,224]``: a 10x10 object at rows/cols 100-109 in the frames marked True, else empty."""
    masks = torch.zeros(len(objects), 224, 224)
    for k, has in enumerate(objects):
        if has:
            masks[k, 100:110, 100:110] = 1
    return masks


def test_the_report_also_scores_only_frames_with_a_non_empty_ground_truth():
    """Clip a: an empty GT predicted empty (IoU 1 by AVSBench's rule) and a 10x10 object of which the left half
    is predicted (IoU 50/100 = 0.5; F = 1.3 * 1 * 0.5 / (0.3 * 1 + 0.5) = 0.8125 at every threshold below the
    prediction's sigmoid(10)). Clip b: one empty GT predicted empty (IoU 1; F 0, AVSBench's all-empty clip).

    All frames, per clip: mIoU (0.75 + 1) / 2 = 0.875, F (0.8125 + 0) / 2 = 0.40625; pooled: mIoU 2.5 / 3,
    F 0.8125. Non-empty GT only (1 frame of clip a): 0.5 and 0.8125 both ways, 1 clip."""
    from stbava.zero_shot.run import ZeroShotScores

    a_logits = torch.full((2, 224, 224), EMPTY_LOGIT)
    a_logits[1, 100:110, 100:105] = 10.0
    scores = ZeroShotScores()
    scores.update(a_logits, _frames(False, True), "a")
    scores.update(torch.full((1, 224, 224), EMPTY_LOGIT), _frames(False), "b")
    result, ne = scores.result(), scores.nonempty_report()
    assert (result.miou, result.fscore) == (_approx(0.875), _approx(0.40625))
    assert (result.pooled_miou, result.pooled_fscore) == (_approx(2.5 / 3), _approx(0.8125))
    assert result.per_clip == {"a": {"iou": _approx(0.75), "fscore": _approx(0.8125)},
                               "b": {"iou": _approx(1.0), "fscore": 0.0}}
    assert (ne["miou_nonempty_gt"], ne["fscore_nonempty_gt"]) == (_approx(0.5), _approx(0.8125))
    assert (ne["pooled_miou_nonempty_gt"], ne["pooled_fscore_nonempty_gt"]) == (_approx(0.5), _approx(0.8125))
    assert (ne["clips_nonempty_gt"], ne["frames_nonempty_gt"], ne["frames_scored"]) == (1, 1, 3)


def test_no_frame_with_a_non_empty_ground_truth_reports_none():
    """Nothing to score is None (valid JSON), not NaN; the all-frames metrics are unchanged by it."""
    from stbava.zero_shot.run import ZeroShotScores

    scores = ZeroShotScores()
    scores.update(torch.full((2, 224, 224), EMPTY_LOGIT), _frames(False, False), "silent")
    ne = scores.nonempty_report()
    assert all(ne[k] is None for k in ("miou_nonempty_gt", "fscore_nonempty_gt", "pooled_miou_nonempty_gt",
                                       "pooled_fscore_nonempty_gt"))
    assert (ne["clips_nonempty_gt"], ne["frames_nonempty_gt"], ne["frames_scored"]) == (0, 0, 2)
    assert scores.result().miou == _approx(1.0)


def test_frame_size_comes_from_the_first_frame_file_with_a_clear_error(tmp_path):
    """``(H, W)`` from the file's header; a missing frame names the file and why zero-shot needs it."""
    from PIL import Image

    from stbava.data.clips import Clip, DataError
    from stbava.zero_shot.run import frame_size

    frame = tmp_path / "v_1.png"
    Image.fromarray(np.zeros((180, 320, 3), np.uint8)).save(frame)
    clip = Clip("v", "ms3", "test", None, (frame, tmp_path / "v_2.png"), tmp_path / "v.wav", (), ())
    assert frame_size(clip) == (180, 320)
    frame.unlink()
    with pytest.raises(DataError, match=r"v_1\.png: missing video frame; zero-shot reads the frame size"):
        frame_size(clip)
    frame.write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable video frame"):
        frame_size(clip)
