"""The training loss of stages two and three."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the annotated frames only (S4 train: frame 1; MS3: all; REFERENCE §7).

    Args:
        logits: ``[B,T,H,W]``; masks: ``[B,T,H,W]`` in {0,1}; valid: ``[B,T]`` bool.

    Returns:
        Scalar: mean over annotated frames of the per-frame mean BCE (0 when no frame is annotated, so a
        DDP padding rank contributes no gradient).
    """
    per_frame = F.binary_cross_entropy_with_logits(logits.float(), masks.float(), reduction="none").mean((-2, -1))
    w = valid.float()
    return (per_frame * w).sum() / w.sum().clamp_min(1.0)


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the annotated, non-padded frames only (AVSS).

    Args:
        logits: ``[B,T,K,H,W]`` class scores (log-probabilities or logits); labels: ``[B,T,H,W]`` class
            indices; valid: ``[B,T]`` bool (False for padded and unannotated frames).

    Returns:
        Scalar: mean over valid frames of the per-frame mean pixel cross-entropy (0 when none is valid). Invalid
        frames are dropped before the loss, so nothing they hold (not even a NaN) reaches it or its gradient.
    """
    keep = valid.bool()
    if not bool(keep.any()):
        return logits.float().sum() * 0.0
    lg, lb = logits[keep].float(), labels[keep].long()  # [M,K,H,W], [M,H,W]
    return F.cross_entropy(lg, lb, reduction="none").mean((-2, -1)).mean()
