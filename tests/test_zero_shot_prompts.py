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
