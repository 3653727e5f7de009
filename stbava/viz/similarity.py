"""The audio-visual similarity figure (paper Fig 6.2): cosine similarity of visual tokens to the audio token.

Uses matplotlib's object API with the Agg canvas (no pyplot, so the user's global backend is never touched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stbava.viz.mask_overlay import as_numpy, check_frames, check_masks, overlay_mask

FIG_CELL_IN = 1.8  # similarity figure: inches per frame tile
FIG_DPI = 100
_FIG_MARGIN_W_IN = 0.8  # row labels + colour bars
_FIG_MARGIN_H_IN = 0.5  # title


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

    f = check_frames(frames)
    t, hh, ww = f.shape[:3]
    rows: list[tuple[str, np.ndarray | None]] = [("frames", None)]
    for name, s in (("before ST-BAVA", sim_before), ("after ST-BAVA", sim_after)):
        s = as_numpy(s)
        if s.ndim != 3 or s.shape[0] != t:
            raise ValueError(f"similarity maps must be [T,h,w] with T={t}, got {s.shape}")
        rows.append((name, s))
    masks = check_masks(pred, t, "pred") if pred is not None else None
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
