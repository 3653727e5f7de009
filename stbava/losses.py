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
