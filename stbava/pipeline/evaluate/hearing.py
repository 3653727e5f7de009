"""IoU per hearing condition of the synthetic set: where a model that listens one second at a time fails.

The synthetic generator records, per clip and second, whether the source was heard clearly, drowned in
noise or paused (``synthetic_truth.json``, see ``stbava.data.synthetic_audio``). The overall mIoU mixes
those frames; this splits the per-frame IoU (AVSBench's frame rule, :func:`stbava.metrics.frame_ious`) by
condition and by clip kind, so the demo can show *where* temporal attention helps.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.data.synthetic import TRUTH_FILE
from stbava.metrics import frame_ious
from stbava.pipeline.core.sources import Batch


class HearingBreakdown:
    """``on_batch`` hook for ``run_eval``: collects frame IoUs grouped by hearing condition and clip kind.

    Groups: ``clear`` / ``drowned`` / ``pause`` (the second's condition), and ``steady`` / ``handover``
    (one source all clip long, or one source handing over to another).
    """

    def __init__(self, data_root: str | Path) -> None:
        path = Path(data_root) / TRUTH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no synthetic truth file (data not made by `stbava synth`)")
        self.truth: dict[str, Any] = json.loads(path.read_text())["clips"]
        self.ious: dict[str, list[float]] = defaultdict(list)

    def __call__(self, batch: Batch, logits: torch.Tensor) -> None:
        """Score every annotated frame of the batch (logits ``[B,T,224,224]``) against its masks."""
        for b, cid in enumerate(batch.clip_ids):
            rec = self.truth[cid]
            kind = "handover" if np.asarray(rec["sounding"]).any(axis=0).sum() > 1 else "steady"
            valid = batch.mask_valid[b].bool()
            if not valid.any():  # no annotated frame (as evaluate_net, skip: frame_ious refuses an empty batch)
                continue
            ious = frame_ious(logits[b][valid], batch.masks[b][valid])
            for iou, hearing in zip(ious, np.asarray(rec["hearing"])[valid.numpy()]):
                self.ious[str(hearing)].append(float(iou))
                self.ious[kind].append(float(iou))

    def absorb(self, parts: list[dict[str, list[float]]]) -> None:
        """Replace the collected IoUs by the union of every rank's ``ious`` (torchrun eval)."""
        merged: dict[str, list[float]] = defaultdict(list)
        for part in parts:
            for g, v in part.items():
                merged[g].extend(v)
        self.ious = merged

    def summary(self) -> dict[str, dict[str, float]]:
        """{group: {"miou": mean frame IoU, "frames": count}} for every group seen."""
        return {g: {"miou": float(np.mean(v)), "frames": len(v)} for g, v in sorted(self.ious.items())}
