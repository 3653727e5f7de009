"""The overlay grid PNG that `eval --save-vis` writes: one row per frame, frame | ground truth | prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from stbava.viz.mask_overlay import GT_COLOR, PRED_COLOR, check_frames, check_masks, overlay_mask

GRID_PAD_PX = 4  # white gap around every tile of the overlay grid
GRID_LABEL_PX = 16  # column-header band of the overlay grid
GRID_TITLE_PX = 18  # title band of the overlay grid (only with a title)


def save_overlay_grid(frames: np.ndarray, gt: np.ndarray | torch.Tensor | None, pred: np.ndarray | torch.Tensor,
                      path: str | Path, title: str | None = None) -> Path:
    """One row per frame: frame | ground-truth overlay | prediction overlay (GT column dropped when None).

    Image size: width = C*W + (C+1)*GRID_PAD_PX, height = [GRID_TITLE_PX] + GRID_LABEL_PX + T*H + (T+1)*pad.

    Args:
        frames: uint8 ``[T,H,W,3]`` RGB.
        gt: ``[T,h,w]`` {0,1} or None.
        pred: ``[T,h,w]`` {0,1} (binarise logits first: ``sigmoid > 0.5``).
        path: output PNG.
        title: optional text above the grid (e.g. the clip id).

    Returns:
        ``path`` as a Path.
    """
    f = check_frames(frames)
    t, h, w = f.shape[:3]
    cols = [("frame", list(f))]
    if gt is not None:
        g = check_masks(gt, t, "gt")
        cols.append(("ground truth", [overlay_mask(f[i], g[i], GT_COLOR) for i in range(t)]))
    p = check_masks(pred, t, "pred")
    cols.append(("prediction", [overlay_mask(f[i], p[i], PRED_COLOR) for i in range(t)]))
    top = (GRID_TITLE_PX if title else 0) + GRID_LABEL_PX
    width = len(cols) * w + (len(cols) + 1) * GRID_PAD_PX
    height = top + t * h + (t + 1) * GRID_PAD_PX
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text((GRID_PAD_PX, 2), title, fill=(0, 0, 0), font=font)
    for c, (label, tiles) in enumerate(cols):
        x = GRID_PAD_PX + c * (w + GRID_PAD_PX)
        draw.text((x, top - GRID_LABEL_PX + 2), label, fill=(0, 0, 0), font=font)
        for r, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (x, top + GRID_PAD_PX + r * (h + GRID_PAD_PX)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
