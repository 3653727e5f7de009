"""The learning rate of every optimiser step: a pure function of the step, so a resumed run needs no state."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at(step: int, *, base_lr: float, total_steps: int, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``constant`` is the published ST-BAVA recipe (Adam, fixed lr). ``cosine`` decays from ``base_lr`` to 0
    over the steps after the warm-up (half a cosine period). Why it exists: a short run (the CPU demo's few
    hundred steps) at a fixed lr ends wherever the last noisy steps left it; decaying the lr lets it settle.
    Both start with ``warmup_steps`` of linear warm-up from ``base_lr / warmup_steps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
