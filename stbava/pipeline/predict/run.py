"""One ``predict`` run: an input (video, frames folder, or a folder of videos) -> masks, overlay, summary.

Per input the output folder gets ``masks/`` (:mod:`.predict_outputs`), the overlay video (:mod:`.overlay`)
and ``summary.json``, all moved into place only when the input succeeded (a failed input leaves nothing).
A folder of videos gets one output folder per video, named by its file name without the extension; two
videos with the same name (``a.mp4``, ``a.mov``) are refused before anything runs. A video that fails is
reported (``failed`` in the result and in ``batch.json``) and the others still run.

Every option, and a single input itself, is checked before the model is loaded (:func:`plan_inputs`), so a
typo costs no model start and is reported once, not once per video.
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
from stbava.data.video import check_range
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.predict.outputs import MaskRecorder, staged
from stbava.pipeline.predict.overlay import (
    GifWriter,
    HeldMasks,
    OverlayWriter,
    check_max_side,
    output_size,
    write_held,
)
from stbava.pipeline.predict.windows import Predictor, load_predictor, stride_offsets, window_count

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


def validate_options(opts: PredictOptions) -> list[float]:
    """Check every option (DataError naming the option and the fix); returns the series offsets of the stride."""
    check_range(opts.start, opts.duration)
    check_max_side(opts.max_side)
    if Path(opts.video_name).suffix.lower() not in {".mp4", ".gif"}:
        raise DataError(f"overlay name {opts.video_name!r}: must end in .mp4 or .gif")
    return stride_offsets(opts.temporal_stride)


def _unique_outputs(videos: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """``(video, out/<stem>)`` per video; DataError when two videos would share an output folder."""
    by_name: dict[str, list[Path]] = {}
    for v in videos:
        by_name.setdefault(v.stem.casefold(), []).append(v)  # casefold: a.mp4 and A.mov clash on macOS too
    clashes = [names for names in by_name.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(v.name for v in names) + f" -> {out / names[0].stem}/" for names in clashes)
        raise DataError(f"{videos[0].parent}: videos with the same name but another extension would write the "
                        f"same output folder ({listed}): rename one of each, or move it to another folder")
    return [(v, out / v.stem) for v in videos]


def plan_inputs(input_path: str | Path, out: str | Path, opts: PredictOptions) -> tuple[bool, list[tuple[Path, Path]]]:
    """Everything checkable before the model loads: the options, the input, the output folders.

    Returns ``(is_folder_of_videos, [(input, its output folder), ...])``. A single input is opened once here
    (a file without sound or a frames folder without its wav fails now); a folder's videos are opened when
    their turn comes, so one bad file does not stop the others.
    """
    validate_options(opts)
    src, out = Path(input_path), Path(out)
    if is_video_folder(src):
        if opts.audio:
            raise DataError(f"{src}: --audio is for a folder of frames; each video uses its own audio track")
        videos = folder_videos(src)
        return True, _unique_outputs(videos, out)
    if opts.audio and not src.is_dir():
        raise DataError(f"{src}: --audio is for a folder of frames; a video uses its own audio track")
    open_media(src, opts.audio, opts.start, opts.duration)
    return False, [(src, out)]


def predict_one(pred: Predictor, src: str | Path, out: str | Path, opts: PredictOptions) -> dict[str, Any]:
    """Segment one input; writes ``out/masks``, ``out/<video_name>`` and ``out/summary.json``; returns the summary.

    Nothing is left in ``out`` if it fails (see :func:`stbava.pipeline.predict.outputs.staged`).
    """
    offsets = validate_options(opts)
    media = open_media(src, opts.audio, opts.start, opts.duration)
    with staged(Path(out)) as stage:
        return _segment(pred, media, Path(src), stage, Path(out), opts, offsets)


def _segment(pred: Predictor, media: Any, src: Path, stage: Path, out: Path, opts: PredictOptions,
             offsets: list[float]) -> dict[str, Any]:
    """The masks, overlay and summary of ``media`` written into ``stage``; the summary names them under ``out``."""
    from tqdm.auto import tqdm

    size = output_size(media.width, media.height, opts.max_side)
    w, h = size or (media.width, media.height)
    video = stage / opts.video_name
    gif = video.suffix.lower() == ".gif"
    writer = GifWriter(video, len(offsets)) if gif else OverlayWriter(video, media.fps, w, h, media.audio_track())
    held, rec, frames, pending = HeldMasks(len(offsets)), MaskRecorder(stage, src.stem, out), media.frames(size), []
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
                             overlay=str(out / opts.video_name))


def run_predict(checkpoint: str | Path, input_path: str | Path, out: str | Path, *,
                search: WeightSearch | None = None, device: str = "auto",
                options: PredictOptions | None = None) -> dict[str, Any]:
    """Predict one input, or every video of a folder (``out/<stem>/`` each).

    Returns:
        ``{"results": [summary, ...], "failed": [{"input", "error"}, ...]}``. A single input's errors are
        raised; in a folder they are collected, and ``out/batch.json`` lists both.
    """
    opts = options or PredictOptions()
    folder, jobs = plan_inputs(input_path, out, opts)
    pred = load_predictor(checkpoint, search=search, device=device)
    if not folder:
        return {"results": [predict_one(pred, *jobs[0], opts)], "failed": []}
    results, failed = [], []
    for video, video_out in jobs:
        try:
            results.append(predict_one(pred, video, video_out, opts))
        except (DataError, OSError, ValueError, RuntimeError) as e:  # a bad file must not stop the others
            log.error("%s failed: %s", video, e)
            failed.append({"input": str(video), "error": f"{type(e).__name__}: {e}"})
    report = {"results": results, "failed": failed}
    atomic_write_text(Path(out) / "batch.json", json.dumps(report, indent=1) + "\n")
    return report
