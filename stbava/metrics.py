"""AVSBench mIoU and F-score, computed exactly as the official evaluation code does (REFERENCE §8).

Two ways to summarise a split:

* **AVSBench protocol** (``mask_iou``, ``f_score``, ``MetricAccumulator``): each metric batch gets one value,
  and the split value is the plain mean of the batch values. The published numbers used one clip (5 frames)
  per batch. The F-score picks its best threshold separately for every batch, and a batch whose ground truth
  is empty in every frame scores 0.0 even when the prediction is perfect. Frames with empty ground truth
  count in mIoU (score = fraction of pixels predicted as background) but are skipped by the F-score. As a
  result the F-score, and the mIoU when clips have different numbers of annotated frames, depend on the
  batch size, so always evaluate with one clip per batch when you compare with published numbers.
* **Pooled** (``PooledMetrics``, ``frame_ious``): mIoU is the mean IoU over all annotated frames of the
  split. The F-score takes the F curve averaged over every frame with non-empty ground truth, then one max
  over thresholds, i.e. one threshold for the whole split (the usual "max F" of saliency detection).
  Neither number depends on batching. The pooled F is usually a little below the AVSBench F, because a mean
  of per-clip maxima is at least the maximum of the mean curve.

Both are computed in float32 on the device of the logits, with the official thresholds and epsilons.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from stbava.metrics_semantic import SemanticAccumulator

__all__ = [
    "BETA2",
    "NUM_THRESHOLDS",
    "MetricAccumulator",
    "PooledMetrics",
    "SemanticAccumulator",
    "f_curves",
    "f_score",
    "frame_ious",
    "mask_iou",
    "thresholds",
]

BETA2 = 0.3  # F-measure weight as in AVSBench's Eval_Fmeasure (precision weighted more than recall)
NUM_THRESHOLDS = 255  # pr_num of Eval_Fmeasure
_IOU_EPS = 1e-7
_PR_EPS = 1e-20
_FRAME_CHUNK = 64  # frames per bucketize pass: bounds the int64 index tensor to ~25 MB at 224x224

ArrayLike = torch.Tensor | np.ndarray


def thresholds(device: torch.device | str = "cpu") -> torch.Tensor:
    """The official 255 thresholds ``torch.linspace(0, 1 - 1e-10, 255)`` in float32 (the last one is 1.0).

    Built on the CPU and then moved, so every device uses the same values (numpy's linspace differs in 10).
    """
    return torch.linspace(0.0, 1.0 - 1e-10, NUM_THRESHOLDS, dtype=torch.float32).to(device)


def _as_tensors(logits: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and {0,1} float32 ground truth, both ``[N,H,W]`` on the logits' device."""
    lg = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(logits))
    lg = lg.detach().to(torch.float32)
    g = gt if isinstance(gt, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(gt))
    g = g.detach().to(device=lg.device, dtype=torch.float32)
    if lg.ndim != 3:
        raise ValueError(f"logits must be [N,H,W] (one metric batch of frames), got shape {tuple(lg.shape)}")
    if g.shape != lg.shape:
        raise ValueError(f"ground truth shape {tuple(g.shape)} differs from logits shape {tuple(lg.shape)}")
    if lg.shape[0] == 0:
        raise ValueError("empty metric batch: no frames (skip clips without annotated frames)")
    if bool(((g != 0) & (g != 1)).any()):
        raise ValueError("ground truth must be binary {0,1}; binarise masks first (foreground = value > 0)")
    return lg, g


def _frame_iou_tensor(lg: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU ``[N]`` float32, official rules: strict ``sigmoid > 0.5``; empty GT scores true negatives."""
    pred = torch.sigmoid(lg) > 0.5
    gtb = g > 0.5
    inter = (pred & gtb).sum(dim=(1, 2))
    union = (pred | gtb).sum(dim=(1, 2))
    empty = gtb.sum(dim=(1, 2)) == 0
    inter = torch.where(empty, (~pred & ~gtb).sum(dim=(1, 2)), inter)
    union = torch.where(empty, torch.full_like(union, lg.shape[1] * lg.shape[2]), union)
    # integer counts are exact in float32 below 2**24 pixels, so this is the official float32 arithmetic
    return inter.to(torch.float32) / (union.to(torch.float32) + _IOU_EPS)


def frame_ious(logits: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """IoU of every frame with AVSBench's rules (an empty-GT frame scores its fraction of background pixels).

    Args:
        logits: ``[N,H,W]`` mask logits (torch or numpy).
        gt: ``[N,H,W]`` ground truth in {0,1}.

    Returns:
        ``[N]`` float64 array of the float32 per-frame values.
    """
    lg, g = _as_tensors(logits, gt)
    return _frame_iou_tensor(lg, g).cpu().numpy().astype(np.float64)


def mask_iou(logits: ArrayLike, gt: ArrayLike) -> float:
    """AVSBench ``mask_iou`` of one metric batch: mean of the per-frame IoUs, empty-GT frames included.

    Args:
        logits: ``[N,H,W]`` mask logits of the batch's frames (torch or numpy).
        gt: ``[N,H,W]`` ground truth in {0,1}.

    Returns:
        The batch value in [0,1] (AVSBench reports it x100).
    """
    lg, g = _as_tensors(logits, gt)
    return float(_frame_iou_tensor(lg, g).sum() / lg.shape[0])


def _curves(lg: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """F curves ``[M,255]`` float32 of the frames with non-empty ground truth, in frame order."""
    keep = g.sum(dim=(1, 2)) > 0
    lg, g = lg[keep], g[keep]
    th = thresholds(lg.device)
    out = []
    for s in range(0, lg.shape[0], _FRAME_CHUNK):
        p = torch.sigmoid(lg[s:s + _FRAME_CHUNK]).flatten(1)
        gb = g[s:s + _FRAME_CHUNK].flatten(1) > 0.5
        m = p.shape[0]
        # k = number of thresholds <= p, so pixel counts as positive at threshold i exactly when i < k,
        # which is the official ``p >= th_i`` without materialising 255 binary masks
        k = torch.bucketize(p, th, right=True)
        k = torch.where(torch.isnan(p), torch.zeros_like(k), k)  # NaN >= th is False in the official loop
        idx = k + (NUM_THRESHOLDS + 1) * torch.arange(m, device=k.device)[:, None]
        n_bins = m * (NUM_THRESHOLDS + 1)
        hist = torch.bincount(idx.flatten(), minlength=n_bins).view(m, -1)
        hist_tp = torch.bincount(idx[gb], minlength=n_bins).view(m, -1)
        pos = hist.flip(-1).cumsum(-1).flip(-1)[:, 1:].to(torch.float32)  # sum over k > i
        tp = hist_tp.flip(-1).cumsum(-1).flip(-1)[:, 1:].to(torch.float32)
        n_gt = gb.sum(dim=1, keepdim=True).to(torch.float32)
        prec = tp / (pos + _PR_EPS)
        rec = tp / (n_gt + _PR_EPS)
        f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        out.append(torch.where(torch.isnan(f), torch.zeros_like(f), f))
    if not out:
        return torch.zeros(0, NUM_THRESHOLDS, dtype=torch.float32, device=lg.device)
    return torch.cat(out)


def f_curves(logits: ArrayLike, gt: ArrayLike) -> np.ndarray:
    """Per-frame F-measure over the 255 thresholds, for the frames whose ground truth is not empty.

    Args:
        logits: ``[N,H,W]`` mask logits.
        gt: ``[N,H,W]`` ground truth in {0,1}.

    Returns:
        ``[M,255]`` float32 array, M = number of frames with non-empty ground truth (frame order kept).
    """
    lg, g = _as_tensors(logits, gt)
    return _curves(lg, g).cpu().numpy()


def f_score(logits: ArrayLike, gt: ArrayLike) -> float:
    """AVSBench ``Eval_Fmeasure`` of one metric batch: max over thresholds of the mean F curve of its frames.

    Frames with empty ground truth are skipped; a batch with no other frame scores 0.0.

    Args:
        logits: ``[N,H,W]`` mask logits of the batch's frames (torch or numpy).
        gt: ``[N,H,W]`` ground truth in {0,1}.

    Returns:
        The batch value in [0,1].
    """
    lg, g = _as_tensors(logits, gt)
    curves = _curves(lg, g)
    if curves.shape[0] == 0:
        return 0.0
    acc = curves[0].clone()
    for c in curves[1:]:  # sequential float32 sum, as the official per-frame ``avg_f += f_score``
        acc += c
    return float((acc / curves.shape[0]).max())


def _batches(logits: ArrayLike, gt: ArrayLike) -> Iterable[tuple[ArrayLike, ArrayLike]]:
    """``[N,H,W]`` is one metric batch; ``[B,T,H,W]`` is B batches (one per clip, the published protocol)."""
    if logits.ndim == 4:
        if gt.shape != logits.shape:
            raise ValueError(f"ground truth shape {tuple(gt.shape)} differs from logits shape {tuple(logits.shape)}")
        return [(logits[b], gt[b]) for b in range(logits.shape[0])]
    return [(logits, gt)]


class MetricAccumulator:
    """AVSBench's dataset values: the unweighted mean of batch values (its ``AverageMeter``).

    ``update`` takes one metric batch ``[N,H,W]`` or a stack of clips ``[B,T,H,W]``, each of which then counts
    as its own batch, as with the published one-clip batches. Batch values are kept by key (a clip id, or the
    arrival index when no key is given) and averaged in key order, so states gathered from several ranks
    (:meth:`merged`) give exactly the single-process result.
    """

    def __init__(self) -> None:
        self.values: dict[object, tuple[float, float]] = {}

    @property
    def batches(self) -> int:
        return len(self.values)

    def update(self, logits: ArrayLike, gt: ArrayLike, keys: Iterable[object] | None = None
               ) -> list[tuple[float, float]]:
        """Add batches (optionally named by ``keys``, one per batch); returns their ``(iou, fscore)`` values."""
        pairs = list(_batches(logits, gt))
        names = list(keys) if keys is not None else [len(self.values) + i for i in range(len(pairs))]
        if len(names) != len(pairs):
            raise ValueError(f"{len(names)} keys for {len(pairs)} metric batches")
        out = [(mask_iou(lg, g), f_score(lg, g)) for lg, g in pairs]
        self.values.update(zip(names, out))
        return out

    @classmethod
    def merged(cls, parts: Iterable[MetricAccumulator]) -> MetricAccumulator:
        """Combine states with disjoint keys, e.g. every rank's after an all-gather (this one included)."""
        out = cls()
        for p in parts:
            out.values.update(p.values)
        return out

    def _mean(self, i: int) -> float:
        if not self.values:
            return float("nan")
        return float(np.mean([self.values[k][i] for k in sorted(self.values)]))  # type: ignore[type-var]

    @property
    def miou(self) -> float:
        """Mean of batch mIoUs (NaN before the first update)."""
        return self._mean(0)

    @property
    def fscore(self) -> float:
        """Mean of batch F-scores (NaN before the first update)."""
        return self._mean(1)


class PooledMetrics:
    """Batch-size-independent summary of a split (see the module docstring); small and picklable.

    mIoU = mean IoU over all frames; F = max over thresholds of the mean F curve over all non-empty-GT frames.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.iou_sum = 0.0
        self.f_frames = 0
        self.curve_sum = np.zeros(NUM_THRESHOLDS, dtype=np.float64)

    def update(self, logits: ArrayLike, gt: ArrayLike) -> None:
        """Add frames: ``[N,H,W]`` or ``[B,T,H,W]`` (flattened; batching does not matter here)."""
        for lg, g in _batches(logits, gt):
            lt, gtt = _as_tensors(lg, g)
            self.iou_sum += float(_frame_iou_tensor(lt, gtt).to(torch.float64).sum())
            self.frames += lt.shape[0]
            curves = _curves(lt, gtt)
            self.curve_sum += curves.to(torch.float64).sum(dim=0).cpu().numpy()
            self.f_frames += curves.shape[0]

    @classmethod
    def merged(cls, parts: Iterable[PooledMetrics]) -> PooledMetrics:
        """Combine states, e.g. every rank's object after an all-gather (pass all of them, this one included)."""
        out = cls()
        for p in parts:
            out.frames += p.frames
            out.iou_sum += p.iou_sum
            out.f_frames += p.f_frames
            out.curve_sum = out.curve_sum + p.curve_sum
        return out

    @property
    def miou(self) -> float:
        """Mean IoU over all frames seen (NaN when none)."""
        return self.iou_sum / self.frames if self.frames else float("nan")

    @property
    def fscore(self) -> float:
        """Max F of the split's mean curve; 0.0 when every frame had empty GT (as AVSBench), NaN when none."""
        if not self.frames:
            return float("nan")
        if not self.f_frames:
            return 0.0
        return float((self.curve_sum / self.f_frames).max())
