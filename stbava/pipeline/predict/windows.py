"""``stbava predict``: segment the sounding objects of a user's own video (or frames + wav), streamed.

The media side (decoding, AVSBench sampling) is :mod:`stbava.data.video`; this module runs the model on it.
Windows: seconds [0,5), [5,10), ... A last partial window (the video is not a multiple of 5 s long) is
aligned to the end of the video instead, overlapping the previous window, and only its seconds not already
covered are written. A video shorter than 5 s (but at least one second) is padded by repeating its last
frame and last audio example (the AVSBench padding rule); masks are written for its real seconds only.

With ``--temporal-stride S`` (S = 1/n s) the same is done for n series of seconds, starting 0, S, 2S, ... s
into the video; every window still samples its frames one second apart, as the model was trained, so the
model runs n times as often. Decoding, inference and the overlay are streamed window by window: memory
does not grow with the video's length.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.checkpoint import CheckpointFormatError, read_checkpoint
from stbava.config import EncoderConfig
from stbava.data.clips import DataError
from stbava.data.video import SR, TIME_EPS, Second
from stbava.device import resolve_device
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.core.net import Net
from stbava.provenance import require_same_encoders

log = logging.getLogger(__name__)


def stride_offsets(stride: float) -> list[float]:
    """``--temporal-stride`` -> the start offsets of the series of seconds: 0.2 -> [0, 0.2, 0.4, 0.6, 0.8]."""
    n = round(1 / stride) if stride > 0 else 0
    if n < 1 or n > 50 or abs(n * stride - 1) > TIME_EPS:
        raise DataError(f"--temporal-stride must be 1/n seconds for n = 1..50 (1, 0.5, 0.25, 0.2, 0.1, ...), "
                        f"got {stride}")
    return [i / n for i in range(n)]


class SeriesWindows:
    """The window layout: groups the seconds of one series (one start offset) into T-second windows.

    ``push`` returns a full window every T seconds; ``flush`` returns the last partial window (aligned to the
    end, or padded when the series is shorter than T). Each window comes with the seconds it writes.
    """

    @staticmethod
    def windows_for(seconds: int, t: int) -> int:
        """How many windows ``push`` + ``flush`` give for ``seconds`` seconds: one per full T, one for the rest."""
        return -(-seconds // t) if seconds > 0 else 0

    def __init__(self, t: int) -> None:
        self.t, self.count, self.done = t, 0, 0
        self.buf: deque[Second] = deque(maxlen=t)

    def push(self, sec: Second) -> tuple[list[Second], list[Second]] | None:
        self.buf.append(sec)
        self.count += 1
        if self.count % self.t:
            return None
        self.done = self.count
        return list(self.buf), list(self.buf)

    def flush(self) -> tuple[list[Second], list[Second]] | None:
        if self.count == self.done:
            return None
        new = list(self.buf)[-(self.count - self.done):]
        self.done = self.count
        return list(self.buf), new


def window_count(length: float | None, offsets: list[float], t: int) -> int | None:
    """How many windows a clip of ``length`` seconds needs (for the progress bar); None when unknown."""
    if length is None:
        return None
    return sum(SeriesWindows.windows_for(math.floor(length - o + TIME_EPS), t) for o in offsets)


def _fusion_net_with_encoders(net: Net, enc_cfg: EncoderConfig, frames: int, payload: dict[str, Any],
                              dev: torch.device, search: WeightSearch | None = None) -> Net:
    """A stage-two net with the frozen encoders it was trained with as embedder.

    The weight files are located and checked by the digests the checkpoint records (``search``: other
    places to look); what else the fingerprint records (architecture, numerics) must match too.
    """
    from stbava.encoders.build import build_frozen_encoders
    from stbava.encoders.fingerprint import encoder_fingerprint
    from stbava.encoders.weights import locate_weights
    from stbava.pipeline.core.sources import LiveEmbedder

    enc_cfg = locate_weights(enc_cfg, payload.get("fingerprint"), search, subject=f"checkpoint {payload['path']}")
    require_same_encoders(
        payload.get("fingerprint"), encoder_fingerprint(enc_cfg, frames), subject=f"{payload['path']} was trained on",
        other="these encoder settings", error=CheckpointFormatError,
        fix="re-extract and retrain with these encoders, or use the checkpoint's own")
    image, vggish = build_frozen_encoders(enc_cfg, dev)
    return Net(net.model, LiveEmbedder(image, vggish, audio_adapters=False))


@dataclass
class Predictor:
    """A restored net ready for raw frames + audio: built once, used for every input (CLI batch, web app)."""

    net: Net
    t: int  # frames per window (the checkpoint's T)
    encoder: str  # the image encoder's name: how frames are resized for it (pipeline.core.sources.encoder_frames)
    device: torch.device

    def window_probs(self, secs: list[Second]) -> np.ndarray:
        """Probabilities ``[T,224,224]`` of one window (padded by repeating the last frame and audio example).

        The array is numpy's own (not a view of torch's buffer), so Python's memory tracing (tracemalloc, the
        streaming-memory test) sees every mask that is still held.
        """
        from stbava.data.transforms import waveform_to_examples
        from stbava.pipeline.core.sources import encoder_frames

        frames = [s.frame for s in secs] + [secs[-1].frame] * (self.t - len(secs))
        mels = waveform_to_examples(np.concatenate([s.audio for s in secs]), SR, num_examples=self.t)
        x = encoder_frames(self.encoder, frames).to(self.device)
        with torch.inference_mode():
            logits = self.net(frames=x[None], log_mels=torch.from_numpy(mels)[None].to(self.device))[0]
        return torch.sigmoid(logits.float()).cpu().numpy().copy()

    def probs(self, seconds: Iterable[Second], offsets: list[float], on_window: Callable[[], Any] | None = None
              ) -> Iterator[tuple[float, np.ndarray]]:
        """``(start, prob [224,224])`` for every second of ``seconds``, window by window, as windows complete.

        ``on_window`` is called after each window (progress bars, counting).
        """
        series = {round(o, 6): SeriesWindows(self.t) for o in offsets}

        def run(win: tuple[list[Second], list[Second]] | None) -> Iterator[tuple[float, np.ndarray]]:
            if win is None:
                return
            p = self.window_probs(win[0])
            starts = [s.start for s in win[0]]
            if on_window is not None:
                on_window()
            for s in win[1]:
                yield s.start, p[starts.index(s.start)]

        for sec in seconds:
            yield from run(series[round(sec.start - math.floor(sec.start + TIME_EPS), 6)].push(sec))
        for s in series.values():
            yield from run(s.flush())


def load_predictor(checkpoint: str | Path, *, search: WeightSearch | None = None, device: str = "auto") -> Predictor:
    """Restore a stage-two (with its frozen encoders) or stage-three checkpoint for raw video input.

    ``search``: where the encoders' weight files are looked for besides the paths the checkpoint records
    (each file is checked against the recorded sha256, for both kinds of checkpoint).
    """
    from stbava.pipeline.core.restore import restore_net

    dev = resolve_device(device)
    payload = read_checkpoint(checkpoint)
    net, cfg = restore_net(payload, dev, search)
    if cfg.subset == "avss":
        raise CheckpointFormatError(f"{payload['path']}: an AVSS (semantic) checkpoint predicts class maps; predict "
                                    "draws binary masks, so use `stbava eval` for it")
    if payload["kind"] == "fusion":
        net = _fusion_net_with_encoders(net, cfg.encoder, cfg.frames, payload, dev, search)
    return Predictor(net.eval(), cfg.frames, cfg.encoder.name, dev)
