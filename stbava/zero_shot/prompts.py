"""Visual prompts from ground-truth masks, for SAM's zero-shot baselines (thesis §6.3, Table 6.2 top rows).

The thesis prompts vanilla SAM with points or boxes taken from the ground-truth mask of the sounding objects:
the largest regions of the mask, one point per region at its centre of mass (or a random point of the region
when the centre of mass is not on it), or the minimal bounding box of each region. These helpers compute
those prompts in the mask's pixel coordinates and map them to the image encoder's input frame.

Conventions (SAM's, so the prompts go to SAM's prompt encoder unchanged):

- Coordinates are ``(x, y)`` = (column, row) in pixel-index units: pixel (i, j) has coordinate (j, i); SAM's
  prompt encoder adds 0.5 to reach the pixel centre (``PromptEncoder._embed_points`` / ``_embed_boxes``).
- Boxes are XYXY with *inclusive* corners ``(x0, y0, x1, y1)`` = (leftmost column, top row, rightmost column,
  bottom row), as SAM's own mask-to-box helper ``segment_anything.utils.amg.batched_mask_to_box`` returns them
  (a one-pixel region gives x0 == x1).
- Regions are the connected components of the mask by ``scipy.ndimage.label`` with 8-connectivity by default
  (pixels touching at a corner belong together, as in OpenCV's contours and ``connectedComponents``, which the
  thesis's "largest contour region" suggests); ``connectivity=4`` is available.
- Largest first by pixel count; ties go to the region whose first pixel comes first in raster order (row by
  row), which is ``ndimage.label``'s numbering. Deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from stbava.data.transforms import sam_resize_shape

PromptKind = Literal["point", "box"]
_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def largest_regions(mask: np.ndarray, n: int, connectivity: int = 8) -> tuple[np.ndarray, list[int]]:
    """Label the mask's connected regions and pick the ``n`` largest.

    Args:
        mask: ``[H,W]`` bool (anything non-zero counts as foreground).
        n: how many regions at most.
        connectivity: 8 (default) or 4.

    Returns:
        ``(labels [H,W] int, ids)``: the label image and the labels of the chosen regions, largest first
        (ties: lower label first, i.e. first in raster order); fewer than n when the mask has fewer regions.
    """
    if connectivity not in _STRUCTURE:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_STRUCTURE[connectivity])
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")[:n]  # stable: equal areas keep label (raster) order
    return labels, [int(i) + 1 for i in order]


def _region_point(labels: np.ndarray, region: int, rng: np.random.Generator) -> tuple[float, float]:
    """Centre of mass ``(x, y)`` of one region, or a uniformly drawn pixel of it if the centre is off it."""
    row, col = ndimage.center_of_mass(labels == region)
    r, c = int(np.floor(row + 0.5)), int(np.floor(col + 0.5))  # the pixel containing the centre
    if labels[r, c] == region:
        return float(col), float(row)
    pixels = np.argwhere(labels == region)  # raster order, so the draw is reproducible for a seed
    pr, pc = pixels[rng.integers(len(pixels))]
    return float(pc), float(pr)


def prompts_from_mask(mask: np.ndarray, kind: PromptKind, n: int, seed: int, *,
                      connectivity: int = 8) -> np.ndarray:
    """Point or box prompts for the ``n`` largest regions of a ground-truth mask (thesis §6.3).

    Args:
        mask: ``[H,W]`` bool mask of the sounding objects (AVSBench: 224x224).
        kind: ``"point"``: one point per region at its centre of mass, or, when the centre of mass (rounded to
            a pixel) is not on the region (a ring, a crescent), a pixel of the region drawn at random;
            ``"box"``: the tight bounding box of each region.
        n: number of regions (the thesis uses 1 and 3).
        seed: seeds the random draws (only used for regions whose centre of mass is off them).
        connectivity: 8 (default) or 4, see the module docstring.

    Returns:
        float64 ``[k,2]`` points ``(x, y)`` or ``[k,4]`` boxes ``(x0, y0, x1, y1)`` (inclusive), ``k <= n``,
        largest region first; ``[0,2]`` / ``[0,4]`` for an empty mask.
    """
    if kind not in ("point", "box"):
        raise ValueError(f"kind must be 'point' or 'box', got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {mask.shape}")
    labels, regions = largest_regions(mask, n, connectivity)
    if kind == "point":
        rng = np.random.default_rng(seed)
        return np.array([_region_point(labels, r, rng) for r in regions], dtype=np.float64).reshape(-1, 2)
    slices = ndimage.find_objects(labels)
    boxes = [(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in (slices[r - 1] for r in regions)]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def map_coords_to_input(coords: np.ndarray, mask_hw: tuple[int, int], input_side: int,
                        frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Map ``(x, y)`` prompt coordinates from the mask's frame to the image encoder's input frame.

    AVSBench masks cover the whole frame, squashed to 224x224, while frames reach the encoder resized so that
    their longest side is ``input_side`` (SAM's ``ResizeLongestSide``, as
    ``stbava.data.transforms.frames_to_sam_input`` does; the padding is bottom/right, so it moves nothing).
    So a mask coordinate goes to the frame (x * W / mask_w) and then through ``ResizeLongestSide(input_side)
    .apply_coords(., (H, W))``: x scales by new_w / mask_w and y by new_h / mask_h.

    Args:
        coords: ``[..., 2]`` coordinates ``(x, y)`` in the mask's pixels.
        mask_hw: ``(h, w)`` of the mask.
        input_side: the encoder's input side (1024 for SAM ViTs).
        frame_hw: ``(H, W)`` of the original frame; None = the mask's own size (the mask is the frame).

    Returns:
        float64 array of the same shape.
    """
    h, w = mask_hw
    new_h, new_w = sam_resize_shape(*(frame_hw or mask_hw), input_side)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def map_boxes_to_input(boxes: np.ndarray, mask_hw: tuple[int, int], input_side: int,
                       frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """``[k,4]`` XYXY boxes from the mask's frame to the encoder input (``ResizeLongestSide.apply_boxes``)."""
    pairs = np.asarray(boxes).reshape(-1, 2, 2)
    return map_coords_to_input(pairs, mask_hw, input_side, frame_hw).reshape(-1, 4)
