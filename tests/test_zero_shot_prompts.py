"""Zero-shot prompts from ground-truth masks (thesis §6.3): hand-made masks with hand-computed answers, boxes
against SAM's own mask-to-box, coordinate mapping against SAM's ``ResizeLongestSide`` loaded by hand."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from stbava.zero_shot import largest_regions, map_boxes_to_input, map_coords_to_input, prompts_from_mask


def _two_blobs() -> np.ndarray:
    m = np.zeros((12, 14), bool)
    m[1:5, 2:7] = True  # big: 4 x 5 = 20 px, rows 1-4, cols 2-6
    m[8:10, 10:12] = True  # small: 2 x 2 = 4 px, rows 8-9, cols 10-11
    return m


def _ring() -> np.ndarray:
    m = np.zeros((11, 11), bool)
    m[1:10, 1:10] = True
    m[3:8, 3:8] = False  # a 9x9 square ring, 2 px wide: its centre of mass (5, 5) is in the hole
    return m


def test_two_blobs_largest_first_with_centres_of_mass_and_boxes():
    m = _two_blobs()
    one = prompts_from_mask(m, "point", 1, seed=0)
    np.testing.assert_array_equal(one, [[4.0, 2.5]])  # (x, y) = (mean col 4, mean row 2.5) of the big blob
    three = prompts_from_mask(m, "point", 3, seed=0)
    np.testing.assert_array_equal(three, [[4.0, 2.5], [10.5, 8.5]])  # n > #regions: k = 2
    boxes = prompts_from_mask(m, "box", 3, seed=0)
    np.testing.assert_array_equal(boxes, [[2, 1, 6, 4], [10, 8, 11, 9]])  # inclusive XYXY
    assert one.dtype == boxes.dtype == np.float64 and boxes.shape == (2, 4)
    np.testing.assert_array_equal(prompts_from_mask(m, "box", 1, seed=0), [[2, 1, 6, 4]])


def test_ring_point_is_drawn_on_the_ring_and_deterministic():
    m = _ring()
    points = [prompts_from_mask(m, "point", 1, seed=s) for s in range(8)]
    for p in points:
        x, y = p[0]
        assert p.shape == (1, 2) and x == int(x) and y == int(y)
        assert m[int(y), int(x)], "the point must lie on the ring"
    # same seed, same point
    np.testing.assert_array_equal(prompts_from_mask(m, "point", 1, seed=3), points[3])
    assert len({tuple(p[0]) for p in points}) > 1  # the seed really drives the draw
    np.testing.assert_array_equal(prompts_from_mask(m, "box", 1, seed=0), [[1, 1, 9, 9]])


def test_mask_touching_the_border():
    m = np.zeros((6, 8), bool)
    m[0:3, 5:8] = True  # top-right corner block, touches row 0 and the last column
    m[5, 0] = True  # a single pixel in the bottom-left corner
    np.testing.assert_array_equal(prompts_from_mask(m, "box", 3, seed=0), [[5, 0, 7, 2], [0, 5, 0, 5]])
    np.testing.assert_array_equal(prompts_from_mask(m, "point", 3, seed=0), [[6.0, 1.0], [0.0, 5.0]])


def test_empty_mask_gives_empty_prompts():
    m = np.zeros((7, 9), bool)
    pts, boxes = prompts_from_mask(m, "point", 3, seed=0), prompts_from_mask(m, "box", 1, seed=0)
    assert pts.shape == (0, 2) and boxes.shape == (0, 4)


def test_ties_and_connectivity():
    m = np.zeros((6, 6), bool)
    m[4, 4:6] = True  # 2 px, first pixel later in raster order
    m[0, 0:2] = True  # 2 px, first in raster order
    np.testing.assert_array_equal(prompts_from_mask(m, "box", 1, seed=0), [[0, 0, 1, 0]])
    d = np.zeros((4, 4), bool)
    d[0, 0] = d[1, 1] = d[2, 2] = True  # a diagonal: one region with 8-connectivity, three with 4
    assert prompts_from_mask(d, "box", 3, seed=0).tolist() == [[0, 0, 2, 2]]
    assert prompts_from_mask(d, "box", 3, seed=0, connectivity=4).shape == (3, 4)
    labels, ids = largest_regions(d, 5, connectivity=4)
    assert ids == [1, 2, 3] and labels.max() == 3


def test_bad_arguments():
    m = _two_blobs()
    with pytest.raises(ValueError, match="kind"):
        prompts_from_mask(m, "mask", 1, seed=0)
    with pytest.raises(ValueError, match="n must"):
        prompts_from_mask(m, "point", 0, seed=0)
    with pytest.raises(ValueError, match="connectivity"):
        prompts_from_mask(m, "point", 1, seed=0, connectivity=6)


def _sam_file(rel: str) -> Path:
    """Path of a file inside the installed segment_anything, found without running its package __init__."""
    spec = importlib.util.find_spec("segment_anything")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def _load(rel: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, _sam_file(rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_boxes_match_sams_mask_to_box_per_region():
    amg = _load("utils/amg.py", "_sam_amg_by_hand")  # numpy + torch only
    m = np.zeros((20, 24), bool)
    m[:12, :14] = _two_blobs()
    m[8:19, 13:24] = _ring()  # three regions: ring 56 px, blobs 20 and 4 px
    labels, ids = largest_regions(m, 3)
    boxes = prompts_from_mask(m, "box", 3, seed=0)
    assert len(ids) == 3
    sam = [amg.batched_mask_to_box(torch.from_numpy(labels == r)[None]).numpy()[0] for r in ids]
    np.testing.assert_array_equal(boxes, np.array(sam, dtype=np.float64))


@pytest.fixture
def resize_longest_side(monkeypatch):
    """SAM's ``ResizeLongestSide``: its module imports torchvision (absent) at the top for ``apply_image``
    only, so a stub whose functions fail if called stands in while the file is loaded by path."""

    def never(*_a, **_k):
        raise AssertionError("torchvision stub used")

    tv, tvt, tvf = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                 "torchvision.transforms.functional"))
    tvf.resize = tvf.to_pil_image = never
    tv.transforms, tvt.functional = tvt, tvf
    for mod in (tv, tvt, tvf):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return _load("utils/transforms.py", "_sam_transforms_by_hand").ResizeLongestSide


@pytest.mark.parametrize("hw", [(224, 224), (180, 320), (333, 250)])
def test_mapping_matches_resize_longest_side(resize_longest_side, hw):
    rls = resize_longest_side(1024)
    g = np.random.default_rng(0)
    coords = g.uniform(0, min(hw), size=(5, 2))
    boxes = np.sort(g.uniform(0, min(hw), size=(3, 2, 2)), axis=1).reshape(3, 4)
    np.testing.assert_array_equal(map_coords_to_input(coords, hw, 1024), rls.apply_coords(coords, hw))
    np.testing.assert_array_equal(map_boxes_to_input(boxes, hw, 1024), rls.apply_boxes(boxes, hw))
    assert rls.get_preprocess_shape(*hw, 1024)[0] <= 1024


def test_mapping_by_hand_for_avsbench_frames():
    """224 -> 1024: every coordinate scales by 1024 / 224; the input array is not modified."""
    pts = np.array([[0.0, 0.0], [223.0, 111.5]])
    np.testing.assert_allclose(map_coords_to_input(pts, (224, 224), 1024), pts * (1024 / 224))
    np.testing.assert_array_equal(pts, [[0.0, 0.0], [223.0, 111.5]])
    np.testing.assert_allclose(map_boxes_to_input(np.array([[2, 1, 6, 4]]), (224, 224), 1024),
                               [[2 * 1024 / 224, 1024 / 224, 6 * 1024 / 224, 4 * 1024 / 224]])


@pytest.mark.parametrize("frame_hw", [(180, 320), (320, 180), (240, 320)])
def test_mask_prompts_of_a_non_square_frame_land_where_resize_longest_side_puts_them(resize_longest_side,
                                                                                     frame_hw):
    """AVSBench masks are the whole frame squashed to 224x224: a mask point goes to the frame first (x * W/224,
    y * H/224), then through ResizeLongestSide of the frame's size. The mapping used the mask's square shape
    as the frame's, so on a 320x180 frame the points and boxes landed off by up to 44 % (fails on that code)."""
    h, w = frame_hw
    rls = resize_longest_side(1024)
    g = np.random.default_rng(1)
    coords = g.uniform(0, 223, size=(4, 2))
    boxes = np.sort(g.uniform(0, 223, size=(2, 2, 2)), axis=1).reshape(2, 4)
    in_frame = coords * [w / 224, h / 224]
    np.testing.assert_allclose(map_coords_to_input(coords, (224, 224), 1024, frame_hw),
                               rls.apply_coords(in_frame, frame_hw), rtol=1e-12)
    boxes_in_frame = boxes * [w / 224, h / 224, w / 224, h / 224]
    np.testing.assert_allclose(map_boxes_to_input(boxes, (224, 224), 1024, frame_hw),
                               rls.apply_boxes(boxes_in_frame, frame_hw), rtol=1e-12)


# --- the zero-shot command on a non-square AVSBench tree --------------------------------------------------------

FRAME_HW = (180, 320)  # (H, W): a 320x180 frame; the mask is it squashed to 224x224
TREE_POINTS = [(69.5, 49.5), (164.5, 159.5), (11.5, 201.5)]  # centres of mass (x, y) in mask px, largest first
TREE_BOXES = [(30, 20, 109, 79), (150, 150, 179, 169), (10, 200, 13, 203)]  # inclusive XYXY in mask px


def _three_regions() -> np.ndarray:
    """``[224,224]`` uint8 0/255: 60x80, 20x30 and 4x4 px rectangles (the prompts above, by hand)."""
    m = np.zeros((224, 224), np.uint8)
    m[20:80, 30:110] = 255
    m[150:170, 150:180] = 255
    m[200:204, 10:14] = 255
    return m


@pytest.fixture(scope="module")
def non_square_tree(tmp_path_factory):
    """An MS3 tree of one 2-frame test clip with 320x180 frames (the synthetic frames resized), frame 1's mask
    the three hand-made regions and frame 2's empty, and its tiny-encoder cache."""
    from PIL import Image

    from stbava.data.clips import load_clips
    from stbava.data.synthetic import write_synthetic
    from stbava.pipeline.extract.features import run_extraction

    tmp = tmp_path_factory.mktemp("non_square")
    root = write_synthetic(tmp / "d", "ms3", {"train": 0, "val": 0, "test": 1}, seed=2, frames=2)
    (clip,) = load_clips(root, "ms3", ["test"], frames=2)
    for p in clip.frame_paths:
        Image.open(p).convert("RGB").resize(FRAME_HW[::-1], Image.BILINEAR).save(p)
    Image.fromarray(_three_regions(), "L").save(clip.mask_paths[0])
    Image.fromarray(np.zeros((224, 224), np.uint8), "L").save(clip.mask_paths[1])
    run_extraction(root, "ms3", tmp / "c.zarr", "zarr", None, splits=["test"], batch_size=1, device="cpu",
                   progress=False, frames=2)
    return root, tmp / "c.zarr"


def _prompts_seen(monkeypatch, tree, prompt: str) -> list[dict]:
    """Run the zero-shot command's library side on the tree; return what SAM's prompt encoder was given."""
    from stbava import thirdparty
    from stbava.zero_shot.run import run_zero_shot

    encoder = thirdparty.sam_modeling().PromptEncoder
    seen, real = [], encoder.forward

    def spy(self, points, boxes, masks):
        seen.append({"points": None if points is None else points[0].detach().cpu().numpy(),
                     "boxes": None if boxes is None else boxes.detach().cpu().numpy()})
        return real(self, points, boxes, masks)

    monkeypatch.setattr(encoder, "forward", spy)
    run_zero_shot(tree[1], tree[0], "ms3", "test", prompt, device="cpu")
    return seen


def _by_hand_in_frame(xy: np.ndarray) -> np.ndarray:
    """Mask px -> frame px by hand: the mask is the whole frame squashed, so x * W/224 and y * H/224."""
    h, w = FRAME_HW
    return xy * np.tile([w / 224, h / 224], xy.shape[-1] // 2)


def test_zero_shot_points_on_a_320x180_tree_land_where_resize_longest_side_puts_them(
        non_square_tree, monkeypatch, resize_longest_side):
    """The 3 points reach SAM's prompt encoder at ``ResizeLongestSide(256).apply_coords(points_in_frame,
    (180, 320))`` (tiny encoder: 320x180 -> 256x144, padded below), the frame size read from the clip's files.
    Fails on the code before commit 999df73, which mapped through the mask's 224x224 shape (y scaled by 256/224
    instead of 144/224: 56.6 vs 31.8 for the first point) and never looked at the frame files."""
    from stbava.encoders.image import image_size

    seen = _prompts_seen(monkeypatch, non_square_tree, "point3")
    want = resize_longest_side(image_size("tiny")).apply_coords(_by_hand_in_frame(np.array(TREE_POINTS)),
                                                                FRAME_HW)
    assert len(seen) == 1 and seen[0]["boxes"] is None  # frame 2's empty mask: no prompt at all
    np.testing.assert_allclose(seen[0]["points"][0], want, rtol=1e-6)
    assert want[:, 1].max() < 144 < np.array(TREE_POINTS)[:, 1].max() * 256 / 224  # the test tells them apart


def test_zero_shot_boxes_on_a_320x180_tree_land_where_resize_longest_side_puts_them(
        non_square_tree, monkeypatch, resize_longest_side):
    """The 3 boxes (one prompt set each) reach SAM at ``ResizeLongestSide(256).apply_boxes(boxes_in_frame,
    (180, 320))``. Fails on the code before commit 999df73 (the mask's square shape: y0 22.9 vs 12.9)."""
    from stbava.encoders.image import image_size

    seen = _prompts_seen(monkeypatch, non_square_tree, "box3")
    want = resize_longest_side(image_size("tiny")).apply_boxes(_by_hand_in_frame(np.array(TREE_BOXES, float)),
                                                               FRAME_HW)
    assert len(seen) == 1 and seen[0]["points"] is None
    np.testing.assert_allclose(seen[0]["boxes"], want, rtol=1e-6)


def test_zero_shot_cli_prints_all_frames_and_non_empty_gt_scores(non_square_tree, tmp_path):
    """The command's output and report give the scores over all frames and over the 1 of 2 frames (1 clip)
    whose ground truth is not empty; eval's keys keep their meaning."""
    import json

    from click.testing import CliRunner

    from stbava.cli import main

    root, cache = non_square_tree
    out = tmp_path / "zs.json"
    res = CliRunner().invoke(main, ["zero-shot", "--cache", str(cache), "--data-root", str(root), "--subset", "ms3",
                                    "--split", "test", "--prompt", "box1", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert (rep["frames_scored"], rep["frames_nonempty_gt"], rep["clips_nonempty_gt"], rep["clips"]) == (2, 1, 1, 1)
    assert f"{rep['miou']:.4f}" in res.output
    line = "frames with a non-empty ground truth: 1 of 2 (1 clips), "
    assert line + f"mIoU {rep['miou_nonempty_gt']:.4f}, F-score {rep['fscore_nonempty_gt']:.4f}" in res.output
    iou_empty_frame = 1.0  # the empty GT is predicted empty; the clip's mIoU averages it with the other frame
    assert rep["miou"] == pytest.approx((iou_empty_frame + rep["miou_nonempty_gt"]) / 2, abs=1e-6)


@pytest.mark.parametrize("hw", [(224, 224), (180, 320), (320, 180), (333, 250)])
def test_one_resize_rule_for_frames_and_prompts(resize_longest_side, hw):
    """Frames (``frames_to_sam_input``), prompts and the logits' crop share ``data.transforms.sam_resize_shape``,
    which is SAM's ``get_preprocess_shape``; zero-shot has no copy of its own."""
    from stbava.data import transforms
    from stbava.zero_shot import prompts, sam

    assert prompts.sam_resize_shape is sam.sam_resize_shape is transforms.sam_resize_shape
    assert not hasattr(prompts, "_resized_shape")
    want = resize_longest_side.get_preprocess_shape(*hw, 256)
    assert transforms.sam_resize_shape(*hw, 256) == want
    frame = np.zeros((*hw, 3), np.uint8)
    assert tuple(transforms.frames_to_sam_input([frame], 256).shape[2:]) == want
