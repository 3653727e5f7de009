"""``stbava zero-shot``: score vanilla SAM prompted from ground-truth masks with exactly ``eval``'s metrics.

One clip per metric batch (:class:`stbava.metrics.MetricAccumulator`), only annotated frames, and the report
of ``stbava eval`` (:func:`stbava.pipeline.evaluate.report_dict`: the same keys) plus the prompt, the SAM
weights and the seed.

A frame whose ground truth is empty gets no prompt and an empty prediction, which scores IoU 1 for free and
lifts the numbers of a subset with many silent frames (MS3) above what a trained model can show. The report
therefore also gives mIoU / F over the frames with a non-empty ground truth only (``*_nonempty_gt``, same
per-clip averaging) and how many frames that is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stbava.atomic import atomic_write_text
from stbava.data.clips import Clip, DataError, load_clips
from stbava.device import resolve_device
from stbava.metrics import MetricAccumulator, PooledMetrics
from stbava.pipeline.evaluate import EvalResult, eval_result, report_dict
from stbava.pipeline.sources import load_masks
from stbava.zero_shot.sam import PROMPTS, ZeroShotSAM, build_zero_shot_sam, frame_seed

log = logging.getLogger(__name__)


def _clip_logits(model: ZeroShotSAM, embeddings: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                 clip: Clip, prompt: str, seed: int) -> torch.Tensor:
    """``[V,224,224]`` logits of the clip's V annotated frames (embeddings ``[T,256,g,g]``)."""
    frames = [int(k) for k in torch.nonzero(valid).flatten()]
    hw = frame_size(clip)
    return torch.stack([model.frame_logits(embeddings[k], masks[k].numpy() > 0.5, prompt,
                                           frame_seed(seed, clip.id, k), hw) for k in frames])


def frame_size(clip: Clip) -> tuple[int, int]:
    """``(H, W)`` of the clip's frames as stored (all frames of a clip share it; the cache was made from them)."""
    with Image.open(clip.frame_paths[0]) as im:
        return im.height, im.width


class NonEmptyGT:
    """The zero-shot metrics over the frames with a non-empty ground truth only (one clip per batch)."""

    def __init__(self) -> None:
        self.per_clip, self.frames, self.total = MetricAccumulator(), 0, 0

    def update(self, logits: torch.Tensor, masks: torch.Tensor, clip_id: str) -> None:
        """``logits``, ``masks``: ``[V,224,224]`` of the clip's annotated frames."""
        keep = masks.flatten(1).sum(1) > 0
        self.total += len(masks)
        self.frames += int(keep.sum())
        if keep.any():
            self.per_clip.update(logits[keep], masks[keep], keys=[clip_id])

    def report(self) -> dict[str, Any]:
        scored = self.per_clip.batches > 0
        return {"miou_nonempty_gt": self.per_clip.miou if scored else None,
                "fscore_nonempty_gt": self.per_clip.fscore if scored else None,
                "frames_nonempty_gt": self.frames, "frames_scored": self.total}


def cache_sam_file(reader: Any, sam_checkpoint: str | Path | None) -> str | None:
    """The SAM file whose prompt encoder + decoder fit the cache's embeddings, verified by the fingerprint.

    The same search and sha256 check as stage two's decoder init (``locate_weights``): ``--sam-checkpoint``,
    then the recorded path, then the weights folders. None for a cache of a random-initialised encoder.

    Raises:
        CheckpointError: the given file is not the cache's SAM, the cache's SAM file is not found, or a file is
            given for a random-encoder cache.
    """
    from stbava.encoders.weights import WeightSearch, locate_weights
    from stbava.pipeline.stage2 import cache_encoders

    search = WeightSearch(given={"sam_checkpoint": str(sam_checkpoint) if sam_checkpoint else None})
    enc = locate_weights(cache_encoders(reader), reader.fingerprint, search, subject=f"cache {reader.path}",
                         only=("sam",))
    return enc.sam_checkpoint


def run_zero_shot(cache: str | Path, data_root: str | Path, subset: str, split: str, prompt: str, *,
                  sam_checkpoint: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
                  device: str = "auto") -> tuple[EvalResult, dict[str, Any]]:
    """Prompt SAM from the GT masks of every clip of ``split``; write ``eval``'s report to ``out``.

    Raises:
        DataError: unknown prompt, no clips, or clips missing from the cache.
        CheckpointError: a SAM file that is not the cache's (:func:`cache_sam_file`).
    """
    from stbava.cache import open_cache
    from stbava.encoders.image import model_geometry

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
    model, weights = build_zero_shot_sam(sam_checkpoint, **model_geometry(encoder), seed=seed)
    model.to(dev)
    per_clip, pooled, nonempty = MetricAccumulator(), PooledMetrics(), NonEmptyGT()
    for clip in clips:
        masks_np, valid_np = load_masks(clip, reader.frames)
        masks, valid = torch.from_numpy(masks_np), torch.from_numpy(valid_np)
        if not valid.any():
            continue
        emb = torch.from_numpy(reader.image_embeddings(clip.id)).to(dev)
        logits = _clip_logits(model, emb, masks, valid, clip, prompt, seed)
        per_clip.update(logits, masks[valid], keys=[clip.id])
        pooled.update(logits, masks[valid])
        nonempty.update(logits, masks[valid], clip.id)
    result = eval_result(per_clip, pooled)
    report = report_dict(result, subset=subset, split=split, prompt=prompt, sam_weights=weights, seed=seed,
                         cache=str(cache), cache_fingerprint=reader.fingerprint, **nonempty.report())
    if out:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    ne = nonempty.report()
    log.info("zero-shot %s on %s/%s: mIoU %.4f, F %.4f (%d clips); on the %d of %d frames with a non-empty "
             "ground truth: mIoU %s, F %s", prompt, subset, split, result.miou, result.fscore, result.n_clips,
             ne["frames_nonempty_gt"], ne["frames_scored"], _fmt(ne["miou_nonempty_gt"]),
             _fmt(ne["fscore_nonempty_gt"]))
    return result, report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
