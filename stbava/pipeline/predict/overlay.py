"""The overlay video people watch: every input frame at the input's frame rate, its mask, and its own sound.

Masks are *held*: the mask in effect at time ``t`` is the one whose second starts at the latest multiple of
the mask step (1 s by default, ``--temporal-stride`` otherwise) at or before ``t``. Frames are written as soon
as their mask is known, so only one frame and the masks of the current windows are ever held in memory.
Video is H.264 yuv420p (odd sizes padded by one edge row/column); audio is re-encoded to AAC at the input's
rate and channel layout, interleaved with the video as it is written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from stbava.data.clips import DataError
from stbava.data.video import TIME_EPS, AudioTrack
from stbava.viz import mask_layers, paint_layers

MIN_SIDE = 2  # pixels: H.264 yuv420p needs even sizes, so 2x2 is the smallest overlay
log = logging.getLogger(__name__)


def check_max_side(max_side: int | None) -> None:
    """``--max-side``: None (keep the input's size) or at least :data:`MIN_SIDE` pixels."""
    if max_side is not None and not max_side >= MIN_SIDE:
        raise DataError(f"--max-side must be at least {MIN_SIDE} pixels (got {max_side}); leave it out to keep "
                        "the input's resolution")


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(w, h)`` to scale frames to when ``max_side`` is below the input's longer side, else None (keep)."""
    check_max_side(max_side)
    if max_side is None or max(width, height) <= max_side:
        return None
    s = max_side / max(width, height)
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


def edge_width(width: int, height: int) -> int:
    """Mask outline width: 1 px per 320 px of the longer side (2 px at 640, 6 px at 1920), at least 2."""
    return max(2, round(max(width, height) / 320))


class HeldMasks:
    """Masks by step index ``round(start * per_second)``; ``at(t)`` is the mask held over time ``t``."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.masks: dict[int, np.ndarray] = {}

    def add(self, start: float, prob: np.ndarray) -> None:
        self.masks[round(start * self.per_second)] = prob

    def at(self, t: float, final: bool) -> tuple[int, np.ndarray] | None:
        """(step, prob [224,224]) held at ``t``; None while it is not predicted yet (``final``: use the latest)."""
        want = math.floor(t * self.per_second + TIME_EPS)
        if want in self.masks:
            key = want
        elif final and self.masks:
            key = max((k for k in self.masks if k <= want), default=min(self.masks))
        else:
            return None
        for k in [k for k in self.masks if k < key]:  # steps before the held one are never needed again
            del self.masks[k]
        return key, self.masks[key]


def prob_to_mask(prob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of the probability map, then > 0.5: smooth edges at any frame size."""
    from PIL import Image

    img = Image.fromarray(np.asarray(prob, np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(img) > 0.5


class OverlayWriter:
    """H.264 + AAC MP4 writer: ``write(t, frame, step, prob)`` per frame, then ``close()``."""

    def __init__(self, path: Path, fps: Fraction, width: int, height: int, audio: AudioTrack | None) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.rate = Fraction(fps).limit_denominator(100000)
        self.w, self.h = width + width % 2, height + height % 2
        vs = self.container.add_stream("libx264", rate=self.rate, options={"preset": "veryfast", "crf": "20"})
        vs.width, vs.height, vs.pix_fmt = self.w, self.h, "yuv420p"
        vs.codec_context.time_base = 1 / self.rate
        self.video, self.audio, self.chunks = vs, None, None
        if audio is not None:
            self.audio = self.container.add_stream("aac", rate=audio.rate)
            self.audio.layout = audio.layout
            self.audio_rate, self.audio_layout, self.chunks = audio.rate, audio.layout, audio.chunks
        self.audio_pts, self.last_pts, self.key, self.layers = 0, -1, None, None
        self.edge = edge_width(width, height)

    def write(self, t: float, frame: np.ndarray, step: int, prob: np.ndarray) -> None:
        """Paint the held mask on ``frame`` (layers recomputed only when the step changes) and encode it."""
        import av

        if step != self.key:
            self.key, self.layers = step, mask_layers(prob_to_mask(prob, frame.shape[:2]), frame.shape[:2],
                                                      self.edge, halo=True)
        tile = paint_layers(frame, self.layers)
        if tile.shape[:2] != (self.h, self.w):
            tile = np.pad(tile, ((0, self.h - tile.shape[0]), (0, self.w - tile.shape[1]), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(tile), format="rgb24")
        self.last_pts = vf.pts = max(self.last_pts + 1, round(t * self.rate))  # strictly increasing
        vf.time_base = 1 / self.rate
        for packet in self.video.encode(vf):
            self.container.mux(packet)
        self._audio_until(t + 1.0)  # keep the two streams interleaved, about a second apart at most

    def _audio_until(self, t: float | None) -> None:
        import av

        while self.chunks is not None and (t is None or self.audio_pts < t * self.audio_rate):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.chunks = None
                break
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk, np.float32), format="fltp",
                                            layout=self.audio_layout)
            af.sample_rate, af.pts = self.audio_rate, self.audio_pts
            self.audio_pts += chunk.shape[1]
            for packet in self.audio.encode(af):
                self.container.mux(packet)

    def close(self) -> None:
        """Write the remaining audio, flush both encoders and finish the file."""
        self._audio_until(None)
        for stream in (self.video, self.audio):
            if stream is not None:
                for packet in stream.encode(None):
                    self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        """Close without finishing (the input failed) and remove the partial file."""
        path = Path(self.container.name)
        try:
            self.container.close()
        except Exception as e:  # noqa: BLE001 - an unfinished file may not close cleanly; it is removed anyway
            log.debug("closing the unfinished %s: %s", path, e)
        path.unlink(missing_ok=True)


class GifWriter:
    """``--gif``: one painted frame per mask step (the first frame of the step), saved as an animated GIF.

    The frames are kept until ``close()``, so this is for short clips; the MP4 writer streams.
    """

    def __init__(self, path: Path, per_second: int) -> None:
        self.path, self.per_second, self.key = path, per_second, None
        self.tiles: list[np.ndarray] = []

    def write(self, t: float, frame: np.ndarray, step: int, prob: np.ndarray) -> None:
        if step != self.key:
            self.key = step
            m = prob_to_mask(prob, frame.shape[:2])
            self.tiles.append(paint_layers(frame, mask_layers(m, frame.shape[:2], edge_width(*frame.shape[1::-1]),
                                                              halo=True)))

    def abort(self) -> None:
        self.tiles.clear()

    def close(self) -> None:
        from PIL import Image

        self.path.parent.mkdir(parents=True, exist_ok=True)
        imgs = [Image.fromarray(x) for x in self.tiles]
        imgs[0].save(self.path, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=max(round(1000 / self.per_second), 20), loop=0)


def write_held(frames: Iterator[tuple[float, np.ndarray]], held: HeldMasks, writer: OverlayWriter | GifWriter,
               pending: list, final: bool) -> None:
    """Write frames from ``frames`` while their held mask is known; ``pending`` keeps the one frame read ahead."""
    while True:
        if not pending:
            nxt = next(frames, None)
            if nxt is None:
                return
            pending.append(nxt)
        t, img = pending[0]
        hit = held.at(t, final)
        if hit is None:
            return
        writer.write(t, img, *hit)
        pending.clear()
