"""AVSBench-semantic (AVSS) mIoU and F-score, as the official code computes them (REFERENCE §13).

The published computation (``OpenNLPLab/AVSBench`` ``avs_scripts/avss``: ``_batch_miou_fscore`` in
``utils/compute_color_metrics.py``, summed over batches in ``test.py``):

* prediction = argmax over the C classes of each pixel;
* per frame and class c: areas of intersection I_c, prediction P_c and label L_c (``histc``), union
  U_c = P_c + L_c - I_c; IoU_c = I_c / (U_c + 2.22e-16); F_c = (1+β²)·prec·rec / (β²·prec + rec) with
  prec = I_c / P_c, rec = I_c / L_c, β² = 0.3, NaN → 0 (no threshold sweep);
* over the split: per class, the sum of IoU_c (F_c) over frames divided by the number of frames whose union
  for c is not empty; a class that never occurs scores 0; mIoU (F) = mean over **all** C classes, background
  (index 0) included.

What this module does differently, on purpose (each one a defect of the committed code):

* ``test.py`` / ``train.py`` unpack three values from a function returning four, so they do not run; here
  the four-value result is used as intended (only the first three enter the metric).
* ``miou_noBg`` there is ``mean(miou_pc[:-1])``, which drops class 70 ("woman"), not background; here
  ``miou_no_background`` / ``fscore_no_background`` drop index 0, the background.
* padded frames (v1s / v1m clips are padded from 5 to 10 frames with black images and all-background labels)
  are scored as background frames there; here ``update`` takes a per-frame ``valid`` flag and ignores the rest.

The argmax is taken on the logits; the published code takes it after a softmax, which is monotone, so the two
agree except where float32 rounding makes two softmax values tie.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["AVSS_BETA2", "AVSS_NUM_CLASSES", "SemanticAccumulator"]

AVSS_NUM_CLASSES = 71  # config.py NUM_CLASSES: 70 sound-source classes + background (index 0)
AVSS_BETA2 = 0.3
_EPS = 2.220446049250313e-16  # the published IoU epsilon (numpy's float64 machine epsilon)


def frame_areas(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-frame, per-class pixel counts of intersection, prediction and label, each ``[N,C]`` int64.

    Args:
        pred: ``[N,H,W]`` predicted class indices in ``[0, C)``.
        labels: ``[N,H,W]`` ground-truth class indices in ``[0, C)``.
        num_classes: C.
    """
    n = pred.shape[0]
    offset = (torch.arange(n, device=pred.device) * num_classes).view(n, 1, 1)
    size = n * num_classes

    def count(idx: torch.Tensor) -> torch.Tensor:
        return torch.bincount(idx.flatten(), minlength=size).view(n, num_classes)

    hit = pred == labels
    inter = torch.bincount((pred + offset)[hit], minlength=size).view(n, num_classes)
    return inter, count(pred + offset), count(labels + offset)


class SemanticAccumulator:
    """Split-level AVSS metrics: per-class sums over frames, then the published means (module docstring).

    State is three ``[C]`` float64 vectors (sums of per-frame IoU and F, and frame counts), so batching and
    the order of updates do not change the result, and :meth:`merged` combines states from several ranks.

    Args:
        num_classes: C, background = index 0 (AVSS: 71).
        beta2: F-measure weight β² (0.3, as published).
    """

    def __init__(self, num_classes: int = AVSS_NUM_CLASSES, beta2: float = AVSS_BETA2) -> None:
        self.num_classes = int(num_classes)
        self.beta2 = float(beta2)
        self.iou_sum = np.zeros(self.num_classes, np.float64)
        self.f_sum = np.zeros(self.num_classes, np.float64)
        self.count = np.zeros(self.num_classes, np.float64)
        self.frames = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add frames.

        Args:
            logits: ``[N,C,H,W]`` class scores (any monotone form: logits, log-probabilities, probabilities).
            labels: ``[N,H,W]`` integer class indices in ``[0, C)``.
            valid: ``[N]`` bool; False frames (padding, unannotated) are ignored. None = all frames count.

        Raises:
            ValueError: shapes disagree, C differs from ``num_classes``, or a label is outside ``[0, C)``.
        """
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N,{self.num_classes},H,W], got shape {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}")
        labels = labels.to(logits.device).long()
        if valid is not None:
            valid = valid.to(logits.device).bool().flatten()
            if valid.shape[0] != logits.shape[0]:
                raise ValueError(f"valid has {valid.shape[0]} flags for {logits.shape[0]} frames")
            logits, labels = logits[valid], labels[valid]
        if logits.shape[0] == 0:
            return
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}); got values "
                             f"{int(labels.min())}..{int(labels.max())}")
        pred = logits.detach().argmax(dim=1)
        inter, area_pred, area_lab = (a.double() for a in frame_areas(pred, labels, self.num_classes))
        union = area_pred + area_lab - inter
        iou = inter / (union + _EPS)
        prec, rec = inter / area_pred, inter / area_lab  # 0/0 = NaN where the class is absent, as published
        f = (1 + self.beta2) * prec * rec / (self.beta2 * prec + rec)
        f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
        self.iou_sum += iou.sum(0).cpu().numpy()
        self.f_sum += f.sum(0).cpu().numpy()
        self.count += (union > 0).sum(0).cpu().numpy()
        self.frames += int(pred.shape[0])

    @classmethod
    def merged(cls, parts: Iterable[SemanticAccumulator]) -> SemanticAccumulator:
        """Sum states (e.g. every rank's after an all-gather, this one included)."""
        parts = list(parts)
        out = cls(parts[0].num_classes, parts[0].beta2) if parts else cls()
        for p in parts:
            out.iou_sum += p.iou_sum
            out.f_sum += p.f_sum
            out.count += p.count
            out.frames += p.frames
        return out

    def per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class IoU and F ``[C]`` (sum over frames / frames where the class occurs; 0 where it never does)."""
        with np.errstate(all="ignore"):
            iou = np.where(self.count > 0, self.iou_sum / self.count, 0.0)
            f = np.where(self.count > 0, self.f_sum / self.count, 0.0)
        return iou, f

    def result(self) -> dict[str, Any]:
        """The split's metrics.

        Returns:
            ``miou``, ``fscore``: means over all C classes (published definition); ``miou_no_background``,
            ``fscore_no_background``: the same without index 0; ``per_class_iou``, ``per_class_fscore``
            (lists of C floats); ``classes_seen`` (classes in some prediction or label); ``frames`` scored.
            Values are NaN when no frame was scored.
        """
        iou, f = self.per_class()
        nan = float("nan")
        empty = self.frames == 0
        return {
            "miou": nan if empty else float(iou.mean()),
            "fscore": nan if empty else float(f.mean()),
            "miou_no_background": nan if empty else float(iou[1:].mean()),
            "fscore_no_background": nan if empty else float(f[1:].mean()),
            "per_class_iou": iou.tolist(),
            "per_class_fscore": f.tolist(),
            "classes_seen": int((self.count > 0).sum()),
            "frames": self.frames,
        }
