"""AVSS colour labels: the published palette, ``label2idx.json``, and colour PNG -> class-index maps.

REFERENCE §13: ``color_dataloader.get_v2_pallete`` gives class j the VOC-style colour whose R, G, B bit
(7 - i) are bits 3i, 3i + 1, 3i + 2 of j; a label PNG's pixel maps to the class whose colour it equals
exactly. The class order is that of ``label2idx.json`` (index 0 = background).

Resizing: the official val/test loader resizes labels to 224x224 with nearest neighbour (its train loader
crops the short side instead, an augmentation stbava does not make: frames and labels both keep the whole
picture here, so a frame and its label always show the same area).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from stbava.data.clips import DataError

__all__ = ["LABEL2IDX", "colour_to_class", "read_colour_label", "read_label2idx", "v2_palette"]

LABEL2IDX = "label2idx.json"
NUM_PALETTE = 71


def v2_palette(num_classes: int = NUM_PALETTE) -> np.ndarray:
    """``[num_classes, 3]`` uint8 RGB colour of each class (index 0 = black background)."""
    out = np.zeros((num_classes, 3), np.int64)
    for j in range(num_classes):
        lab, bit = j, 7
        while lab:
            for ch in range(3):
                out[j, ch] |= ((lab >> ch) & 1) << bit
            lab >>= 3
            bit -= 1
    return out.astype(np.uint8)


def _codes(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` -> int64 ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_to_class(rgb: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Map ``[H,W,3]`` uint8 colours to ``[H,W]`` int64 class indices by exact palette match.

    Raises:
        DataError: a colour that is not one of the first ``num_classes`` palette colours, naming ``where``
            (the file), the colour and how many pixels have it.
    """
    pal = _codes(v2_palette(num_classes))
    order = np.argsort(pal)
    sorted_pal = pal[order]
    codes = _codes(rgb)
    pos = np.clip(np.searchsorted(sorted_pal, codes), 0, len(pal) - 1)
    bad = sorted_pal[pos] != codes
    if bad.any():
        c = int(codes[bad][0])
        colour = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
        raise DataError(f"{where}: colour {colour} ({int((codes == c).sum())} pixels) is not one of the "
                        f"{num_classes} AVSS palette colours; the label PNG must be saved losslessly with the "
                        "exact palette colours (no anti-aliasing or JPEG); re-download or re-export it")
    return order[pos]


def read_colour_label(path: str | Path, num_classes: int = NUM_PALETTE, size: int = 224) -> np.ndarray:
    """Read one AVSS ``labels_rgb/<i>.png`` as class indices, resized to ``size`` x ``size`` (nearest).

    Returns:
        int64 ``[size,size]`` array of class indices in ``[0, num_classes)``.

    Raises:
        DataError: missing or unreadable file, or a colour outside the palette.
    """
    p = Path(path)
    fix = "re-download the AVSS labels_rgb of this clip"
    if not p.is_file():
        raise DataError(f"{p}: missing AVSS colour label; {fix}")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{p}: unreadable AVSS colour label ({e}); {fix}") from None
    labels = colour_to_class(rgb, num_classes, str(p))
    if labels.shape != (size, size):
        # class ids < 256: a mode-'L' image resized with NEAREST keeps them exactly
        small = Image.fromarray(labels.astype(np.uint8)).resize((size, size), Image.NEAREST)
        labels = np.asarray(small).astype(np.int64)
    return labels


def read_label2idx(root: str | Path) -> list[str]:
    """Class names in index order from ``<root>/label2idx.json`` (``{name: index}``, indices 0..N-1)."""
    p = Path(root) / LABEL2IDX
    fix = "it must map each class name to its index 0..N-1 (index 0 = background); re-download it"
    if not p.is_file():
        raise DataError(f"{p}: missing AVSS class list; {fix}")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable ({e}); {fix}") from None
    if not isinstance(data, dict) or sorted(data.values()) != list(range(len(data))):
        raise DataError(f"{p}: not a {{name: index}} mapping with indices 0..N-1; {fix}")
    if len(data) > NUM_PALETTE:
        raise DataError(f"{p}: {len(data)} classes, the AVSS palette has {NUM_PALETTE}; {fix}")
    return [name for name, _ in sorted(data.items(), key=lambda kv: kv[1])]
