"""Pictures of what the model does: mask overlays, the overlay grid, overlay videos and the similarity figure.

One file per picture; every name is importable from ``stbava.viz``.
"""

from stbava.viz.grid import GRID_LABEL_PX, GRID_PAD_PX, GRID_TITLE_PX, save_overlay_grid
from stbava.viz.mask_overlay import (
    GT_COLOR,
    HALO_COLOR,
    PRED_COLOR,
    mask_layers,
    overlay_mask,
    paint_layers,
    save_mask_png,
)
from stbava.viz.similarity import FIG_CELL_IN, FIG_DPI, cosine_similarity_maps, save_similarity_figure
from stbava.viz.video import write_overlay_video

__all__ = [
    "FIG_CELL_IN",
    "FIG_DPI",
    "GRID_LABEL_PX",
    "GRID_PAD_PX",
    "GRID_TITLE_PX",
    "GT_COLOR",
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
