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


def require_cache_sam(recorded: str | None, sam_checkpoint: str | Path | None, cache: str | Path) -> None:
    """SAM's prompt encoder and decoder fit only the embeddings of their own image encoder: refuse other pairs.

    Args:
        recorded: the cache fingerprint's image ``weights`` (``sha256:<hex>`` for a checkpoint, a random-init
            description otherwise; None for caches that recorded nothing, which are not checked).
        sam_checkpoint: the SAM file given to zero-shot (None: random-init decoder).

    Raises:
        DataError: the file is not the one the cache was extracted with, or the cache came from a SAM
            checkpoint and none was given (a random decoder would be silently substituted).
    """
    from stbava.digest import file_sha256

    if recorded is None:
        return
    if sam_checkpoint is None:
        if str(recorded).startswith("sha256:"):
            raise DataError(f"cache {cache} was extracted with a SAM checkpoint ({recorded}); zero-shot needs that "
                            "checkpoint's prompt encoder and decoder: pass it with --sam-checkpoint")
        return
    have = "sha256:" + file_sha256(sam_checkpoint)
    if have != recorded:
        raise DataError(f"--sam-checkpoint {sam_checkpoint} ({have}) is not the SAM that cache {cache} was extracted "
                        f"with ({recorded}), so its decoder does not fit these embeddings; pass that file, or "
                        "re-extract the cache with this one (`stbava extract-features --sam-checkpoint ...`)")


def run_zero_shot(cache: str | Path, data_root: str | Path, subset: str, split: str, prompt: str, *,
                  sam_checkpoint: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
                  device: str = "auto") -> tuple[EvalResult, dict[str, Any]]:
    """Prompt SAM from the GT masks of every clip of ``split``; write ``eval``'s report to ``out``.

    Raises:
        DataError: unknown prompt, no clips, clips missing from the cache, or a SAM that is not the cache's.
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
    require_cache_sam(reader.fingerprint.get("image", {}).get("weights"), sam_checkpoint, cache)
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
