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


def test_the_report_also_scores_only_frames_with_a_non_empty_ground_truth():
    """Two frames of one clip: an empty GT predicted empty (IoU 1 by AVSBench's rule) and a 10x10 object of
    which the left half is predicted (IoU 0.5 by hand). All frames: 0.75; non-empty frames only: 0.5."""
    from stbava.metrics import MetricAccumulator
    from stbava.zero_shot.run import NonEmptyGT

    masks = torch.zeros(2, 224, 224)
    masks[1, 100:110, 100:110] = 1
    logits = torch.full((2, 224, 224), EMPTY_LOGIT)
    logits[1, 100:110, 100:105] = 10.0
    everything, nonempty = MetricAccumulator(), NonEmptyGT()
    everything.update(logits, masks, keys=["clip"])
    nonempty.update(logits, masks, "clip")
    report = nonempty.report()
    assert everything.miou == pytest.approx(0.75, abs=1e-6)
    assert report["miou_nonempty_gt"] == pytest.approx(0.5, abs=1e-6)
    assert report["frames_nonempty_gt"] == 1 and report["frames_scored"] == 2
    assert NonEmptyGT().report()["miou_nonempty_gt"] is None


def test_zero_shot_on_a_320x180_tree_prompts_through_the_frames_real_size(tmp_path, monkeypatch):
    """The command takes each clip's frame size from its files, so the mapping above is the one used."""
    from PIL import Image

    from stbava.data.synthetic import write_synthetic
    from stbava.pipeline.extract import run_extraction
    from stbava.zero_shot import sam as sam_mod
    from stbava.zero_shot.run import run_zero_shot

    root = write_synthetic(tmp_path / "d", "ms3", {"train": 1, "val": 1, "test": 1}, seed=2, frames=2)
    for p in root.rglob("visual_frames/**/*.png"):
        Image.open(p).resize((320, 180)).save(p)
    run_extraction(root, "ms3", tmp_path / "c.zarr", "zarr", None, splits=["test"], batch_size=1, device="cpu",
                   progress=False, frames=2)
    seen, real = [], sam_mod.ZeroShotSAM.frame_logits

    def spy(self, embedding, mask, prompt, seed, frame_hw=None):
        seen.append(frame_hw)
        return real(self, embedding, mask, prompt, seed, frame_hw)

    monkeypatch.setattr(sam_mod.ZeroShotSAM, "frame_logits", spy)
    _, report = run_zero_shot(tmp_path / "c.zarr", root, "ms3", "test", "box1", device="cpu")
    assert seen and set(seen) == {(180, 320)}
    assert report["frames_scored"] == 2 and 0 <= report["frames_nonempty_gt"] <= 2
