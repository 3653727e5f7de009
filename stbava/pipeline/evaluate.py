"""Evaluation with AVSBench's exact metrics: one clip per metric batch, dataset value = mean of clip values.

The model itself may run several clips per forward (``batch_size``); metrics are still computed per clip,
so the numbers do not depend on that batch size. Under torchrun each rank runs every world-th of the very
batches one process would run and the per-clip values are gathered; the means are taken in clip-id order,
so the result is exactly the single-process result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stbava.pipeline.distributed import dist_info
from stbava.pipeline.net import amp_context
from stbava.pipeline.sources import Batch, collate


@dataclass
class EvalResult:
    """Dataset metrics plus the per-clip values behind them."""

    miou: float
    fscore: float
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)
    pooled_miou: float = float("nan")  # batch-size-independent: mean IoU over all annotated frames
    pooled_fscore: float = float("nan")  # batch-size-independent: F of the split's mean PR curve

    @property
    def n_clips(self) -> int:
        return len(self.per_clip)

    def summary(self) -> dict[str, float]:
        return {"miou": self.miou, "fscore": self.fscore, "pooled_miou": self.pooled_miou,
                "pooled_fscore": self.pooled_fscore, "clips": float(self.n_clips)}


@torch.inference_mode()
def evaluate_net(
    net: torch.nn.Module,
    ds: Dataset,
    device: torch.device,
    *,
    batch_size: int = 4,
    amp: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
) -> EvalResult:
    """Score ``net`` on every clip of ``ds`` (only annotated frames count).

    Args:
        on_batch: called with each batch and its logits ``[B,T,224,224]`` (CPU, float32), e.g. to save masks.
    """
    from tqdm.auto import tqdm

    from stbava.metrics import PooledMetrics, f_score, mask_iou

    dist = dist_info()
    n = len(ds)  # type: ignore[arg-type]
    # same batches as one process (identical forwards), dealt round-robin to the ranks
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)][dist.rank::dist.world]
    loader = DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                        generator=torch.Generator())
    was_training = net.training
    net.eval()
    per_clip: dict[str, dict[str, float]] = {}
    pooled = PooledMetrics()
    for batch in tqdm(loader, desc="eval", disable=not (progress and dist.is_main), leave=False, unit="batch"):
        batch = batch.to(device)
        with amp_context(device, amp):
            logits = net(batch.image, batch.audio)
        logits = logits.float().cpu()
        masks, valid = batch.masks.cpu(), batch.mask_valid.cpu()
        for b, cid in enumerate(batch.clip_ids):
            lg, gt = logits[b][valid[b]], masks[b][valid[b]]
            if len(lg) == 0:
                continue
            per_clip[cid] = {"iou": float(mask_iou(lg, gt)), "fscore": float(f_score(lg, gt))}
            pooled.update(lg, gt)
        if on_batch is not None:
            on_batch(batch, logits)
    net.train(was_training)
    if dist.active:
        merged: dict[str, dict[str, float]] = {}
        for part in dist.all_gather_objects(per_clip):
            merged.update(part)  # type: ignore[arg-type]
        per_clip = merged
        pooled = pooled.merged(dist.all_gather_objects(pooled))  # type: ignore[arg-type]
    per_clip = dict(sorted(per_clip.items()))  # a fixed summation order, whatever the world size
    ious = [v["iou"] for v in per_clip.values()]
    fs = [v["fscore"] for v in per_clip.values()]
    return EvalResult(miou=float(np.mean(ious)) if ious else float("nan"),
                      fscore=float(np.mean(fs)) if fs else float("nan"),
                      per_clip=per_clip,
                      pooled_miou=pooled.miou, pooled_fscore=pooled.fscore)


def report_dict(result: EvalResult, **context: Any) -> dict[str, Any]:
    """The JSON report of ``stbava eval``: metrics as fractions in [0,1] plus provenance."""
    return {"miou": result.miou, "fscore": result.fscore, "clips": result.n_clips,
            "pooled_miou": result.pooled_miou, "pooled_fscore": result.pooled_fscore,
            "per_clip_iou": {k: v["iou"] for k, v in result.per_clip.items()},
            "per_clip_fscore": {k: v["fscore"] for k, v in result.per_clip.items()}, **context}
