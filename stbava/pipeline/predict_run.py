"""One ``predict`` run: an input (video, frames folder, or a folder of videos) -> masks, overlay, summary.

Per input the output folder gets ``masks/`` (:mod:`.predict_outputs`), the overlay video (:mod:`.overlay`)
and ``summary.json``. A folder of videos gets one output folder per video (named by its stem); a video that
fails is reported (``failed`` in the result and in ``batch.json``) and the others still run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.data.clips import DataError
from stbava.data.media import folder_videos, is_video_folder, open_media
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.overlay import GifWriter, HeldMasks, OverlayWriter, output_size, write_held
from stbava.pipeline.predict import Predictor, load_predictor, stride_offsets, window_count
from stbava.pipeline.predict_outputs import MaskRecorder

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """How one input is read and shown (the ``predict`` flags)."""

    audio: str | Path | None = None  # wav for a frames folder
    start: float = 0.0  # seconds into the input
    duration: float | None = None  # seconds from ``start`` (None: to the end)
    temporal_stride: float = 1.0  # seconds between masks (1/n); the model runs 1/stride times as often
    max_side: int | None = None  # scale the overlay so its longer side is at most this (None: input size)
    video_name: str = "overlay.mp4"  # .gif: one frame per mask step instead
    progress: bool = True


def predict_one(pred: Predictor, src: str | Path, out: str | Path, opts: PredictOptions) -> dict[str, Any]:
    """Segment one input; writes ``out/masks``, ``out/<video_name>`` and ``out/summary.json``; returns the summary."""
    from tqdm.auto import tqdm

    media = open_media(src, opts.audio, opts.start, opts.duration)
    offsets = stride_offsets(opts.temporal_stride)
    out, src = Path(out), Path(src)
    size = output_size(media.width, media.height, opts.max_side)
    w, h = size or (media.width, media.height)
    video = out / opts.video_name
    gif = video.suffix.lower() == ".gif"
    writer = GifWriter(video, len(offsets)) if gif else OverlayWriter(video, media.fps, w, h, media.audio_track())
    held, rec, frames, pending = HeldMasks(len(offsets)), MaskRecorder(out, src.stem), media.frames(size), []
    total, done = window_count(media.length, offsets, pred.t), []
    try:
        with tqdm(total=total, desc=src.name, unit="window", disable=not opts.progress, leave=False) as bar:
            def tick() -> None:
                done.append(1)
                bar.update(1)

            for start, prob in pred.probs(media.seconds(offsets), offsets, tick):
                rec.add(start, prob)
                held.add(start, prob)
                write_held(frames, held, writer, pending, final=False)
        if not rec.rows:
            raise DataError(f"{src}: too short: at least one whole second with sound is needed")
        write_held(frames, held, writer, pending, final=True)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return rec.write_summary(input=str(src), start=opts.start, duration=opts.duration, windows=len(done),
                             temporal_stride=opts.temporal_stride, fps=float(media.fps), size=[w, h],
                             overlay=str(video))


def run_predict(checkpoint: str | Path, input_path: str | Path, out: str | Path, *,
                search: WeightSearch | None = None, device: str = "auto",
                options: PredictOptions | None = None) -> dict[str, Any]:
    """Predict one input, or every video of a folder (``out/<stem>/`` each).

    Returns:
        ``{"results": [summary, ...], "failed": [{"input", "error"}, ...]}``. A single input's errors are
        raised; in a folder they are collected, and ``out/batch.json`` lists both.
    """
    opts = options or PredictOptions()
    pred = load_predictor(checkpoint, search=search, device=device)
    if not is_video_folder(input_path):
        return {"results": [predict_one(pred, input_path, out, opts)], "failed": []}
    results, failed = [], []
    for video in folder_videos(input_path):
        try:
            results.append(predict_one(pred, video, Path(out) / video.stem, opts))
        except (DataError, OSError, ValueError, RuntimeError) as e:  # a bad file must not stop the others
            log.error("%s failed: %s", video, e)
            failed.append({"input": str(video), "error": f"{type(e).__name__}: {e}"})
    report = {"results": results, "failed": failed}
    atomic_write_text(Path(out) / "batch.json", json.dumps(report, indent=1) + "\n")
    return report
