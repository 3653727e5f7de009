"""``stbava zero-shot``: score vanilla SAM prompted from ground-truth masks with exactly ``eval``'s metrics.

One clip per metric batch (:class:`stbava.metrics.MetricAccumulator`), only annotated frames, and the report
of ``stbava eval`` (:func:`stbava.pipeline.evaluate.report_dict`: the same keys) plus the prompt, the SAM
weights and the seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from stbava.atomic import atomic_write_text
from stbava.data.clips import DataError, load_clips
from stbava.device import resolve_device
from stbava.metrics import MetricAccumulator, PooledMetrics
from stbava.pipeline.evaluate import EvalResult, eval_result, report_dict
from stbava.pipeline.sources import load_masks
from stbava.zero_shot.sam import PROMPTS, ZeroShotSAM, build_zero_shot_sam, frame_seed

log = logging.getLogger(__name__)


def _clip_logits(model: ZeroShotSAM, embeddings: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                 clip_id: str, prompt: str, seed: int) -> torch.Tensor:
    """``[V,224,224]`` logits of the clip's V annotated frames (embeddings ``[T,256,g,g]``)."""
    frames = [int(k) for k in torch.nonzero(valid).flatten()]
    return torch.stack([model.frame_logits(embeddings[k], masks[k].numpy() > 0.5, prompt,
                                           frame_seed(seed, clip_id, k)) for k in frames])


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
    per_clip, pooled = MetricAccumulator(), PooledMetrics()
    for clip in clips:
        masks_np, valid_np = load_masks(clip, reader.frames)
        masks, valid = torch.from_numpy(masks_np), torch.from_numpy(valid_np)
        if not valid.any():
            continue
        emb = torch.from_numpy(reader.image_embeddings(clip.id)).to(dev)
        logits = _clip_logits(model, emb, masks, valid, clip.id, prompt, seed)
        per_clip.update(logits, masks[valid], keys=[clip.id])
        pooled.update(logits, masks[valid])
    result = eval_result(per_clip, pooled)
    report = report_dict(result, subset=subset, split=split, prompt=prompt, sam_weights=weights, seed=seed,
                         cache=str(cache), cache_fingerprint=reader.fingerprint)
    if out:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    log.info("zero-shot %s on %s/%s: mIoU %.4f, F %.4f (%d clips)", prompt, subset, split, result.miou,
             result.fscore, result.n_clips)
    return result, report
