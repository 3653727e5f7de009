"""``stbava zero-shot``: score vanilla SAM prompted from ground-truth masks with exactly ``eval``'s metrics.

One clip per metric batch (:class:`stbava.metrics.MetricAccumulator`), only annotated frames, and the report
of ``stbava eval`` (:func:`stbava.pipeline.evaluate.loop.report_dict`: the same keys) plus the prompt, the SAM
weights and the seed.

A frame whose ground truth is empty gets no prompt and an empty prediction, which scores IoU 1 for free and
lifts the numbers of a subset with many silent frames (MS3) above what a trained model can show. The report
therefore also gives mIoU / F over the frames with a non-empty ground truth only (``*_nonempty_gt``: the same
per-clip and pooled accumulators, :class:`ZeroShotScores`) and how many clips and frames that is.

The prompts are mapped through each frame's real resize + pad (:mod:`stbava.zero_shot.prompts`), so the frame
size is read from the clip's first frame file (:func:`frame_size`); the cache does not record it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from stbava.atomic import atomic_write_text
from stbava.data.clips import Clip, DataError, load_clips
from stbava.device import resolve_device
from stbava.metrics import MetricAccumulator, PooledMetrics
from stbava.pipeline.core.sources import load_masks
from stbava.pipeline.evaluate.loop import EvalResult, eval_result, report_dict
from stbava.zero_shot.sam import PROMPTS, ZeroShotSAM, build_zero_shot_sam, frame_seed
from stbava.zero_shot.sam2 import ZeroShotSAM2, build_zero_shot_sam2

log = logging.getLogger(__name__)


def _clip_logits(model: ZeroShotSAM | ZeroShotSAM2, embeddings: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                 clip: Clip, prompt: str, seed: int) -> torch.Tensor:
    """``[V,224,224]`` logits of the clip's V annotated frames (embeddings ``[T,256,g,g]``, masks ``[T,224,224]``).

    The prompts go through the frame's real resize + pad, so the frame size comes from the clip's files."""
    frames = [int(k) for k in torch.nonzero(valid).flatten()]
    hw = frame_size(clip)
    return torch.stack([model.frame_logits(embeddings[k], masks[k].numpy() > 0.5, prompt,
                                           frame_seed(seed, clip.id, k), hw) for k in frames])


def frame_size(clip: Clip) -> tuple[int, int]:
    """``(H, W)`` of the clip's frames as stored, read from the first frame's header (cheap: no decode).

    Why from the files: the cache does not record the frames' size, and the masks do not tell it (AVSBench
    masks are always 224x224, the whole frame squashed). All frames of a clip share one size (extraction
    refuses mixed sizes, ``read_clip_frames``), so the first one speaks for the clip.

    Raises:
        DataError: the clip has no frame path, or its first frame is missing or unreadable.
    """
    if not clip.frame_paths:
        raise DataError(f"clip {clip.id} has no frame paths; zero-shot needs a frame to learn the frame size")
    path = clip.frame_paths[0]
    why = "zero-shot reads the frame size from it to place the prompts; pass the --data-root the cache was made from"
    if not path.is_file():
        raise DataError(f"{path}: missing video frame; {why}")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable video frame ({e}); {why}") from None


def _add(scores: tuple[MetricAccumulator, PooledMetrics], logits: torch.Tensor, masks: torch.Tensor,
         clip_id: str) -> None:
    """One clip's ``[V,224,224]`` frames into a (per-clip, pooled) pair, exactly as ``evaluate_net`` adds them."""
    per_clip, pooled = scores
    per_clip.update(logits, masks, keys=[clip_id])
    pooled.update(logits, masks)


def _or_none(value: float) -> float | None:
    """NaN (an accumulator that saw nothing) as None, so the JSON report stays valid JSON."""
    return None if math.isnan(value) else value


class ZeroShotScores:
    """``eval``'s metrics (one clip per metric batch, plus pooled) over all annotated frames and over the
    frames with a non-empty ground truth only.

    Why the second set: an empty-GT frame gets no prompt and an empty prediction, which scores IoU 1 for free
    (AVSBench's rule), so on a subset with many silent frames (MS3) the all-frames mIoU flatters the prompts
    compared with a trained model. The non-empty set uses the same accumulators on the kept frames; a clip
    whose frames are all empty drops out of it (it scores F 0 and IoU ~1 in the all-frames set).
    """

    def __init__(self) -> None:
        self.all = (MetricAccumulator(), PooledMetrics())
        self.nonempty = (MetricAccumulator(), PooledMetrics())
        self.frames = self.frames_nonempty = 0

    def update(self, logits: torch.Tensor, masks: torch.Tensor, clip_id: str) -> None:
        """Add one clip: ``logits``, ``masks`` ``[V,224,224]`` of its V annotated frames (V >= 1)."""
        _add(self.all, logits, masks, clip_id)
        keep = masks.flatten(1).amax(dim=1) > 0
        self.frames += len(masks)
        self.frames_nonempty += int(keep.sum())
        if keep.any():
            _add(self.nonempty, logits[keep], masks[keep], clip_id)

    def result(self) -> EvalResult:
        """All annotated frames: exactly what ``stbava eval`` reports (``miou``, ``fscore``, ``pooled_*``)."""
        return eval_result(*self.all)

    def nonempty_report(self) -> dict[str, Any]:
        """The report's extra keys: the metrics over non-empty-GT frames (None when there is none) and counts."""
        ne = eval_result(*self.nonempty)
        return {"miou_nonempty_gt": _or_none(ne.miou), "fscore_nonempty_gt": _or_none(ne.fscore),
                "pooled_miou_nonempty_gt": _or_none(ne.pooled_miou),
                "pooled_fscore_nonempty_gt": _or_none(ne.pooled_fscore),
                "clips_nonempty_gt": ne.n_clips, "frames_nonempty_gt": self.frames_nonempty,
                "frames_scored": self.frames}


def cache_sam_file(reader: Any, sam_checkpoint: str | Path | None) -> str | None:
    """The SAM file whose prompt encoder + decoder fit the cache's embeddings, verified by the fingerprint.

    The same search and sha256 check as stage two's decoder init (``locate_weights``): ``--sam-checkpoint``,
    then the recorded path, then the weights folders. None for a cache of a random-initialised encoder.

    Raises:
        CheckpointError: the given file is not the cache's SAM, the cache's SAM file is not found, or a file is
            given for a random-encoder cache.
    """
    from stbava.encoders.weights import WeightSearch, locate_weights
    from stbava.pipeline.train.stage2 import cache_encoders

    search = WeightSearch(given={"sam_checkpoint": str(sam_checkpoint) if sam_checkpoint else None})
    enc = locate_weights(cache_encoders(reader), reader.fingerprint, search, subject=f"cache {reader.path}",
                         only=("sam",))
    return enc.sam_checkpoint


def run_zero_shot(cache: str | Path, data_root: str | Path, subset: str, split: str, prompt: str, *,
                  sam_checkpoint: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
                  device: str = "auto", progress: bool = True) -> tuple[EvalResult, dict[str, Any]]:
    """Prompt SAM from the GT masks of every clip of ``split``; write ``eval``'s report to ``out``.

    ``progress``: a tqdm bar over the clips (stderr).

    Raises:
        DataError: unknown prompt, no clips, or clips missing from the cache.
        CheckpointError: a SAM file that is not the cache's (:func:`cache_sam_file`).
    """
    from stbava.cache import open_cache
    from stbava.encoders import hiera
    from stbava.encoders.image import model_geometry
    from stbava.pipeline.train.stage2 import cache_encoders

    if prompt not in PROMPTS:
        raise DataError(f"prompt must be one of {'|'.join(PROMPTS)}, got {prompt!r}")
    reader = open_cache(cache)
    encoder = reader.fingerprint.get("image", {}).get("encoder")
    if encoder is None:
        raise DataError(f"cache {cache} has no image encoder in its fingerprint; rebuild it with "
                        "`stbava extract-features`")
    sam_checkpoint = cache_sam_file(reader, sam_checkpoint)
    clips = load_clips(data_root, subset, [split], frames=reader.frames)
    if not clips:
        raise DataError(f"no clips in split {split!r} of {subset} under {data_root}")
    dev = resolve_device(device, 0)
    if hiera.is_sam2(encoder):  # SAM 2's own prompt encoder + decoder, with the cache's high-res levels
        geometry = model_geometry(encoder, cache_encoders(reader).high_res_features)
        model, weights = build_zero_shot_sam2(sam_checkpoint, **geometry, seed=seed)
    else:
        model, weights = build_zero_shot_sam(sam_checkpoint, **model_geometry(encoder), seed=seed)
    model.to(dev)
    scores = ZeroShotScores()
    for clip in tqdm(clips, desc=f"zero-shot {prompt}", unit="clip", disable=not progress, leave=False):
        masks_np, valid_np = load_masks(clip, reader.frames)
        masks, valid = torch.from_numpy(masks_np), torch.from_numpy(valid_np)
        if not valid.any():
            continue
        emb = torch.from_numpy(reader.image_embeddings(clip.id)).to(dev)
        scores.update(_clip_logits(model, emb, masks, valid, clip, prompt, seed), masks[valid], clip.id)
    result, ne = scores.result(), scores.nonempty_report()
    report = report_dict(result, subset=subset, split=split, prompt=prompt, sam_weights=weights, seed=seed,
                         cache=str(cache), cache_fingerprint=reader.fingerprint, **ne)
    if out:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    log.info("zero-shot %s on %s/%s: mIoU %.4f, F %.4f (%d clips); on the %d of %d frames with a non-empty "
             "ground truth: mIoU %s, F %s", prompt, subset, split, result.miou, result.fscore, result.n_clips,
             ne["frames_nonempty_gt"], ne["frames_scored"], _fmt(ne["miou_nonempty_gt"]),
             _fmt(ne["fscore_nonempty_gt"]))
    return result, report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
