"""``stbava eval``: AVSBench's exact metrics, one clip per metric batch, dataset value = mean of clip values.

The model may run several clips per forward (``batch_size``); metrics are still computed per clip
(:class:`stbava.metrics.MetricAccumulator`), so the numbers do not depend on that batch size. The metric
input is always float32 logits: autocast may run the network, never the metric. Under torchrun each rank
runs every world-th of the very batches one process would run and the per-clip values are gathered; the
means are taken in clip-id order, so the result is exactly the single-process result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from stbava.atomic import atomic_write_text
from stbava.checkpoint import check_compatible, read_checkpoint
from stbava.config import Config, model_option
from stbava.data.clips import Clip, DataError, load_clips, resolve_subset_root
from stbava.device import autocast, check_amp, resolve_device
from stbava.digest import file_sha256
from stbava.encoders.weights import WeightSearch
from stbava.metrics import MetricAccumulator, PooledMetrics, SemanticAccumulator
from stbava.pipeline.core.distributed import dist_info
from stbava.pipeline.core.sources import Batch, CachedClips, CachedSource, LiveSource, collate

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Dataset metrics plus the per-clip values behind them."""

    miou: float
    fscore: float
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)
    pooled_miou: float = float("nan")  # batch-size-independent: mean IoU over all annotated frames
    pooled_fscore: float = float("nan")  # batch-size-independent: F of the split's mean PR curve
    semantic: dict[str, Any] | None = None  # AVSS: SemanticAccumulator.result() (miou/fscore are its values)

    @property
    def n_clips(self) -> int:
        return len(self.per_clip)

    def summary(self) -> dict[str, float]:
        return {"miou": self.miou, "fscore": self.fscore, "pooled_miou": self.pooled_miou,
                "pooled_fscore": self.pooled_fscore, "clips": float(self.n_clips)}


@torch.inference_mode()
def evaluate_net(net: torch.nn.Module, ds: Dataset, device: torch.device, *, batch_size: int = 4,
                 amp: str = "auto", num_workers: int = 0, progress: bool = True,
                 on_batch: Callable[[Batch, torch.Tensor], None] | None = None) -> EvalResult:
    """Score ``net`` on every clip of ``ds`` (only annotated frames count).

    Args:
        on_batch: called with each batch and its logits ``[B,T,224,224]`` (CPU, float32), e.g. to save masks.
    """
    from tqdm.auto import tqdm

    dist = dist_info()
    n = len(ds)  # type: ignore[arg-type]
    # same batches as one process (identical forwards), dealt round-robin to the ranks
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)][dist.rank::dist.world]
    loader = DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                        generator=torch.Generator())
    was_training = net.training
    net.eval()
    clips, pooled = MetricAccumulator(), PooledMetrics()
    semantic: dict[str, SemanticAccumulator] = {}
    for batch in tqdm(loader, desc="eval", disable=not (progress and dist.is_main), leave=False, unit="batch"):
        batch = batch.to(device)
        with autocast(device, amp):
            logits = net(**batch.inputs())
        logits = logits.float().cpu()
        masks, valid = batch.masks.cpu(), batch.mask_valid.cpu()
        if logits.ndim == 5:  # AVSS class scores [B,T,K,H,W]: one accumulator per clip, summed at the end
            for b, cid in enumerate(batch.clip_ids):
                semantic[cid] = SemanticAccumulator(logits.shape[2])
                semantic[cid].update(logits[b], masks[b], valid[b])
            continue
        for b, cid in enumerate(batch.clip_ids):
            if valid[b].any():
                clips.update(logits[b][valid[b]], masks[b][valid[b]], keys=[cid])
                pooled.update(logits[b][valid[b]], masks[b][valid[b]])
        if on_batch is not None:
            on_batch(batch, logits)
    net.train(was_training)
    if semantic or (dist.active and n and _is_semantic(ds)):
        if dist.active:
            semantic = {k: v for part in dist.all_gather_objects(semantic) for k, v in part.items()}  # type: ignore[union-attr]
        return semantic_result(semantic)
    if dist.active:
        clips = MetricAccumulator.merged(dist.all_gather_objects(clips))  # type: ignore[arg-type]
        pooled = pooled.merged(dist.all_gather_objects(pooled))  # type: ignore[arg-type]
    return eval_result(clips, pooled)


def _is_semantic(ds: Dataset) -> bool:
    """Whether ``ds`` holds AVSS clips (a rank that got no batch still joins the semantic gather)."""
    clips = getattr(ds, "clips", None)
    return bool(clips) and clips[0].subset == "avss"


def semantic_result(per_clip: dict[str, SemanticAccumulator]) -> EvalResult:
    """AVSS split result: the per-class sums of all clips (published definition) and, per clip, the mean IoU / F
    over the classes present in that clip (prediction or label), for a per-clip view."""
    total = SemanticAccumulator.merged([per_clip[k] for k in sorted(per_clip)]).result()
    clip_values = {}
    for k in sorted(per_clip):
        iou, f = per_clip[k].per_class()
        seen = per_clip[k].count > 0
        clip_values[k] = {"iou": float(iou[seen].mean()) if seen.any() else float("nan"),
                          "fscore": float(f[seen].mean()) if seen.any() else float("nan")}
    return EvalResult(miou=total["miou"], fscore=total["fscore"], per_clip=clip_values, semantic=total)


def eval_result(clips: MetricAccumulator, pooled: PooledMetrics) -> EvalResult:
    """The dataset result of per-clip metrics (one clip per metric batch) and their pooled counterpart."""
    per_clip = {str(k): {"iou": v[0], "fscore": v[1]} for k, v in sorted(clips.values.items())}  # type: ignore[type-var]
    return EvalResult(miou=clips.miou, fscore=clips.fscore, per_clip=per_clip,
                      pooled_miou=pooled.miou, pooled_fscore=pooled.fscore)


def report_dict(result: EvalResult, **context: Any) -> dict[str, Any]:
    """The JSON report of ``stbava eval``: metrics as fractions in [0,1] plus provenance.

    AVSS adds ``miou_no_background``, ``fscore_no_background``, ``per_class_iou``, ``per_class_fscore``,
    ``classes_seen`` and ``frames``; its ``per_clip_*`` values are means over each clip's present classes.
    """
    extra = {k: v for k, v in (result.semantic or {}).items() if k not in ("miou", "fscore")}
    return {"miou": result.miou, "fscore": result.fscore, "clips": result.n_clips,
            "pooled_miou": result.pooled_miou, "pooled_fscore": result.pooled_fscore, **extra,
            "per_clip_iou": {k: v["iou"] for k, v in result.per_clip.items()},
            "per_clip_fscore": {k: v["fscore"] for k, v in result.per_clip.items()}, **context}


def make_eval_dataset(payload: dict[str, Any], cfg: Config, clips: list[Clip], cache: str | Path | None,
                      shuffle_audio: bool = False) -> tuple[Dataset, dict[str, Any] | None]:
    """Cached embeddings for stage-two checkpoints, raw frames for checkpoints with adapters."""
    if payload["kind"] == "adapters":
        from stbava.encoders.image import image_size

        return LiveSource(image_size(cfg.encoder.name), cfg.frames).dataset(clips, shuffle_audio), None
    if cache is None:
        raise DataError("this checkpoint evaluates on cached embeddings: pass --cache (the stage-one store)")
    ds = CachedSource(cache, cfg.frames).dataset(clips, shuffle_audio)
    check_compatible(payload, cfg, ds.fingerprint)
    return ds, ds.fingerprint


def run_eval(checkpoint: str | Path, data_root: str | Path, split: str, out: str | Path | None, *,
             cache: str | Path | None = None, device: str = "auto", batch_size: int = 4,
             save_masks: str | Path | None = None, overlays: int = 0, figures: int = 0,
             shuffle_audio: bool = False, progress: bool = True, amp: str = "off",
             search: WeightSearch | None = None) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate ``checkpoint`` on ``split``; write the JSON report to ``out`` (and artefacts beside it).

    ``amp``: ``off`` (default) runs the network in float32, whatever ``train.amp`` the checkpoint was trained
    with, so the reported "exact" metrics come from float32 logits; ``bf16`` autocasts the network only.
    ``search``: where a stage-three checkpoint's encoder weight files are looked for (raw-frame eval).
    On data written by ``stbava synth`` (a ``synthetic_truth.json`` in the subset root) the report also has
    ``frame_miou_by_hearing``: mean frame IoU of clear / drowned / paused seconds and hand-over clips.
    """
    from stbava.data.synthetic import TRUTH_FILE
    from stbava.pipeline.core.restore import restore_net
    from stbava.pipeline.evaluate.hearing import HearingBreakdown
    from stbava.pipeline.evaluate.outputs import BatchWriter, save_similarity_figures

    payload = read_checkpoint(checkpoint)
    dist = dist_info()
    dev = resolve_device(device, dist.local_rank)
    numerics = check_amp(dev, amp, "--amp bf16", "--amp off")
    net, cfg = restore_net(payload, dev, search)
    clips = load_clips(data_root, cfg.subset, [split], frames=cfg.frames, avss_parts=cfg.avss_labels)
    if not clips:
        raise DataError(f"no clips in split {split!r} of {cfg.subset} under {data_root}")
    if cfg.subset == "avss" and (save_masks or overlays):
        raise DataError("--save-masks and --overlays draw binary masks; they are not available for subset avss")
    ds, fp = make_eval_dataset(payload, cfg, clips, cache, shuffle_audio)
    out_dir = Path(out).parent if out else Path(".")
    writer = None
    if save_masks or (overlays and dist.is_main):
        # every rank writes the masks of its own clips; overlays come from rank 0's clips only
        writer = BatchWriter({c.id: c for c in clips}, Path(save_masks) if save_masks else None,
                             out_dir / "overlays" if overlays and dist.is_main else None, overlays)
    truth_root = resolve_subset_root(data_root, cfg.subset)
    hearing = HearingBreakdown(truth_root) if (truth_root / TRUTH_FILE).is_file() else None
    hooks = [h for h in (writer, hearing) if h is not None]

    def each_batch(batch: Batch, logits: torch.Tensor) -> None:
        for h in hooks:
            h(batch, logits)

    result = evaluate_net(net, ds, dev, batch_size=batch_size, amp=amp, progress=progress,
                          on_batch=each_batch if hooks else None)
    report = report_dict(result, subset=cfg.subset, split=split, shuffled_audio=shuffle_audio,
                         checkpoint=str(payload["path"]), checkpoint_digest=file_sha256(payload["path"]),
                         checkpoint_kind=payload["kind"], cache=str(cache) if cache else None,
                         cache_fingerprint=fp, config=cfg.to_dict(), amp=amp, numerics=numerics,
                         train_numerics=payload["extra"].get("numerics"))
    if hearing is not None:
        if dist.active:
            hearing.absorb(dist.all_gather_objects(dict(hearing.ious)))
        report["frame_miou_by_hearing"] = hearing.summary()
    if figures and isinstance(ds, CachedClips) and dist.is_main:
        depth = model_option(cfg.model, "depth")
        if net.model.supports_fuse and depth:
            report["similarity_figures"] = save_similarity_figures(net, ds, out_dir, figures, dev)
        else:  # before/after features exist only for ST-BAVA blocks
            log.info("no similarity figures: fusion %r (depth %d) has no ST-BAVA features", cfg.model.fusion,
                     depth or 0)
    if out and dist.is_main:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return result, report
