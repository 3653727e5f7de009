"""A mask drawn over a frame: tinted fill, solid outline, optional dark halo; and masks saved as AVSBench-style PNGs.

Shared by the overlay grid, the overlay videos and predict's streamed overlay (numpy + PIL, exact pixel sizes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

GT_COLOR = (40, 220, 60)
PRED_COLOR = (255, 70, 30)
HALO_COLOR = (20, 20, 20)  # the dark ring outside predicted masks in overlay videos


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (any device, detached, as float32) or array-like as a numpy array."""
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """``frames`` as uint8 ``[T,H,W,3]`` RGB numpy, or a ValueError saying what came instead."""
    f = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,H,W,3] RGB, got {f.dtype} {f.shape}")
    return f


def check_masks(masks: np.ndarray | torch.Tensor, n: int, what: str) -> np.ndarray:
    """``masks`` ``[n,H,W]`` (probabilities or {0,1}) as bool at 0.5, or a ValueError naming ``what``."""
    m = as_numpy(masks)
    if m.ndim != 3 or m.shape[0] != n:
        raise ValueError(f"{what} must be [T,H,W] with T={n} (one mask per frame), got shape {m.shape}")
    return m > 0.5


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W): predictions are 224x224, frames may be larger."""
    if mask.shape == hw:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)
    return np.asarray(img) > 127


def _boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Mask pixels within ``width`` 4-neighbour steps of the outside (image borders do not count as outside)."""
    if width > 1:
        from scipy.ndimage import binary_erosion

        return mask & ~binary_erosion(mask, iterations=width, border_value=1)
    p = np.pad(mask, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def mask_layers(mask: np.ndarray, hw: tuple[int, int], edge_px: int = 1,
                halo: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(fill, edge, halo) bool ``[H,W]`` layers of a mask at frame size ``hw``: compute once, paint many frames.

    ``edge`` is the band of ``edge_px`` pixels inside the mask's border; ``halo`` (when asked) is the one-pixel
    ring just outside it, drawn dark so the edge stays visible on bright and on orange-ish backgrounds.
    """
    m = _resize_mask(np.asarray(mask) > 0.5, hw)
    ring = None
    if halo:
        from scipy.ndimage import binary_dilation

        ring = binary_dilation(m) & ~m
    return m, _boundary(m, edge_px), ring


def paint_layers(frame: np.ndarray, layers: tuple[np.ndarray, np.ndarray, np.ndarray | None],
                 color: tuple[int, int, int] = PRED_COLOR, alpha: float = 0.45) -> np.ndarray:
    """Tint ``fill``, draw ``edge`` in solid ``color`` and ``halo`` in near-black on a copy of ``frame``."""
    fill, edge, ring = layers
    out = frame.copy()
    c = np.asarray(color, np.float32)
    out[fill] = np.clip((1 - alpha) * out[fill].astype(np.float32) + alpha * c + 0.5, 0, 255).astype(np.uint8)
    out[edge] = np.asarray(color, np.uint8)
    if ring is not None:
        out[ring] = HALO_COLOR
    return out


def overlay_mask(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = PRED_COLOR,
                 alpha: float = 0.45, edge_px: int = 1, halo: bool = False) -> np.ndarray:
    """Tint ``mask`` on ``frame`` and draw its outline in solid colour.

    Args:
        frame: uint8 ``[H,W,3]``.
        mask: ``[h,w]`` {0,1} (resized to the frame with nearest neighbour when sizes differ).
        color: RGB of the tint and outline.
        alpha: tint opacity.
        edge_px: outline width in pixels (inside the mask).
        halo: also draw a one-pixel dark ring just outside the mask.

    Returns:
        uint8 ``[H,W,3]``.
    """
    return paint_layers(frame, mask_layers(mask, frame.shape[:2], edge_px, halo), color, alpha)


def save_mask_png(mask: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """Write a {0,1} mask as an 8-bit gray ('L') PNG with 0 = background and 255 = foreground (AVSBench GT style).

    Name files with 1-based frame numbers (``<vid>_<k>.png``, k = 1..T) like the GT masks; the published code
    used 0-based names for predictions.

    Args:
        mask: ``[H,W]`` in {0,1} (bool, int or float).
        path: output PNG; parent folders are created.

    Returns:
        ``path`` as a Path.
    """
    m = as_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("mask must be binary {0,1}; threshold logits first (sigmoid > 0.5)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((m > 0).astype(np.uint8) * 255).save(out, format="PNG")
    return out
