"""Pictures of what the model does: mask overlays, overlay videos and the audio-visual similarity figure.

Grids and videos are composed with numpy + PIL so their pixel sizes are exact; the similarity figure uses
matplotlib's object API with the Agg canvas (no pyplot, so the user's global backend is never touched).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FIG_CELL_IN",
    "FIG_DPI",
    "GRID_LABEL_PX",
    "GRID_PAD_PX",
    "GRID_TITLE_PX",
    "HALO_COLOR",
    "PRED_COLOR",
    "cosine_similarity_maps",
    "mask_layers",
    "overlay_mask",
    "paint_layers",
    "save_mask_png",
    "save_overlay_grid",
    "save_similarity_figure",
    "write_overlay_video",
]

GT_COLOR = (40, 220, 60)
PRED_COLOR = (255, 70, 30)
HALO_COLOR = (20, 20, 20)  # the dark ring outside predicted masks in overlay videos
GRID_PAD_PX = 4  # white gap around every tile of the overlay grid
GRID_LABEL_PX = 16  # column-header band of the overlay grid
GRID_TITLE_PX = 18  # title band of the overlay grid (only with a title)
FIG_CELL_IN = 1.8  # similarity figure: inches per frame tile
FIG_DPI = 100
_FIG_MARGIN_W_IN = 0.8  # row labels + colour bars
_FIG_MARGIN_H_IN = 0.5  # title


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    f = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,H,W,3] RGB, got {f.dtype} {f.shape}")
    return f


def _check_masks(masks: np.ndarray | torch.Tensor, n: int, what: str) -> np.ndarray:
    m = _np(masks)
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
    f = _check_frames(frames)
    t, h, w = f.shape[:3]
    cols = [("frame", list(f))]
    if gt is not None:
        g = _check_masks(gt, t, "gt")
        cols.append(("ground truth", [overlay_mask(f[i], g[i], GT_COLOR) for i in range(t)]))
    p = _check_masks(pred, t, "pred")
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


def cosine_similarity_maps(V: torch.Tensor | np.ndarray, A: torch.Tensor | np.ndarray, h: int, w: int) -> np.ndarray:
    """Cosine similarity between every visual token and the frame's audio token (paper Fig 6.2).

    Args:
        V: ``[T,HW,C]`` visual tokens, row-major over the ``h x w`` grid (``E.flatten(2).transpose(1, 2)``).
        A: ``[T,C]`` (or ``[T,1,C]``) audio tokens.
        h, w: grid size, ``h*w == HW``.

    Returns:
        float32 ``[T,h,w]`` in [-1, 1].
    """
    v = torch.as_tensor(V).detach().float()
    a = torch.as_tensor(A).detach().float().to(v.device)
    if a.ndim == 3 and a.shape[1] == 1:
        a = a[:, 0]
    if v.ndim != 3 or a.ndim != 2 or a.shape[0] != v.shape[0] or a.shape[1] != v.shape[2]:
        raise ValueError(f"need V [T,HW,C] and A [T,C], got {tuple(v.shape)} and {tuple(a.shape)}")
    if v.shape[1] != h * w:
        raise ValueError(f"V has {v.shape[1]} tokens per frame, expected h*w = {h}*{w}")
    vn = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sim = (vn * an[:, None, :]).sum(-1)
    return sim.reshape(-1, h, w).cpu().numpy()


def save_similarity_figure(frames: np.ndarray, sim_before: np.ndarray, sim_after: np.ndarray, path: str | Path,
                           title: str | None = None, pred: np.ndarray | None = None) -> Path:
    """Paper Fig 6.2: rows = frames / similarity before ST-BAVA / after ST-BAVA (/ predicted mask).

    Each similarity row shares one colour scale across its frames (with a colour bar), so changes over time are
    comparable; the maps are upsampled bilinearly and blended over the dimmed frame.
    Size: ``(FIG_CELL_IN*T + 0.8) x (FIG_CELL_IN*rows + 0.5)`` inches at ``FIG_DPI``.

    Args:
        frames: uint8 ``[T,H,W,3]``.
        sim_before, sim_after: ``[T,h,w]`` from ``cosine_similarity_maps``.
        path: output PNG.
        title: figure title.
        pred: optional ``[T,h,w]`` {0,1} predicted masks, shown as a fourth row.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f = _check_frames(frames)
    t, hh, ww = f.shape[:3]
    rows: list[tuple[str, np.ndarray | None]] = [("frames", None)]
    for name, s in (("before ST-BAVA", sim_before), ("after ST-BAVA", sim_after)):
        s = _np(s)
        if s.ndim != 3 or s.shape[0] != t:
            raise ValueError(f"similarity maps must be [T,h,w] with T={t}, got {s.shape}")
        rows.append((name, s))
    masks = _check_masks(pred, t, "pred") if pred is not None else None
    n_rows = len(rows) + (masks is not None)
    fig = Figure(figsize=(FIG_CELL_IN * t + _FIG_MARGIN_W_IN, FIG_CELL_IN * n_rows + _FIG_MARGIN_H_IN), dpi=FIG_DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    # a narrow last column holds the colour bars, so every frame tile keeps the same size
    grid = fig.add_gridspec(n_rows, t + 1, width_ratios=[1.0] * t + [0.06])
    axes = np.array([[fig.add_subplot(grid[r, i]) for i in range(t)] for r in range(n_rows)])
    extent = (-0.5, ww - 0.5, hh - 0.5, -0.5)
    for r, (name, s) in enumerate(rows):
        for i in range(t):
            ax = axes[r, i]
            if s is None:
                ax.imshow(f[i])
            else:
                ax.imshow((f[i] * 0.5).astype(np.uint8))
                im = ax.imshow(s[i], cmap="jet", alpha=0.6, vmin=float(s.min()), vmax=float(s.max()),
                               interpolation="bilinear", extent=extent)
        if s is not None:
            fig.colorbar(im, cax=fig.add_subplot(grid[r, t]))
        axes[r, 0].set_ylabel(name)
    if masks is not None:
        for i in range(t):
            axes[-1, i].imshow(overlay_mask(f[i], masks[i]))
        axes[-1, 0].set_ylabel("prediction")
    for r in range(n_rows):
        for i in range(t):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
            if r == 0:
                axes[r, i].set_title(f"t={i + 1}", fontsize=9)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=FIG_DPI)
    return out


def write_overlay_video(frames: np.ndarray, masks: np.ndarray | torch.Tensor, path: str | Path,
                        fps: float = 1) -> Path:
    """Frames with their predicted masks tinted: H.264 MP4 (PyAV) or, for a ``.gif`` path, an animated GIF.

    The MP4 is yuv420p (plays everywhere), so odd frame sizes are padded by one edge row/column. Pillow merges
    identical consecutive GIF frames into one longer frame (same playback).

    Args:
        frames: uint8 ``[N,H,W,3]`` RGB, N >= 1.
        masks: ``[N,h,w]`` {0,1}.
        path: output file; the suffix picks the format.
        fps: frames per second (AVSBench samples 1 frame per second).

    Returns:
        ``path`` as a Path.
    """
    f = _check_frames(frames)
    if len(f) == 0:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    m = _check_masks(masks, len(f), "masks")
    tiles = [overlay_mask(f[i], m[i]) for i in range(len(f))]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        imgs = [Image.fromarray(x) for x in tiles]
        imgs[0].save(out, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=max(round(1000 / fps), 20), loop=0)
        return out
    _write_h264(tiles, out, fps)
    return out


def _write_h264(tiles: list[np.ndarray], out: Path, fps: float) -> None:
    import av

    h, w = tiles[0].shape[:2]
    ph, pw = h % 2, w % 2
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w + pw, h + ph
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for i, tile in enumerate(tiles):
            if ph or pw:
                tile = np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tile), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


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
    m = _np(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("mask must be binary {0,1}; threshold logits first (sigmoid > 0.5)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((m > 0).astype(np.uint8) * 255).save(out, format="PNG")
    return out
