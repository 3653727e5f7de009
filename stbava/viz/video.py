"""Overlay videos of a clip's predicted masks: H.264 MP4 through PyAV, or an animated GIF through Pillow."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stbava.viz.mask_overlay import check_frames, check_masks, overlay_mask


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
    f = check_frames(frames)
    if len(f) == 0:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    m = check_masks(masks, len(f), "masks")
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
