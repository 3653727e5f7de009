"""Which clips go into which batch: a pure function of (seed, epoch), split over DDP ranks.

Exact resume rests on this: the batch order of epoch ``e`` never depends on what ran before, so a resumed run
replays the rest of the epoch exactly, and under torchrun the global batch is the same for any world size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from stbava.pipeline.core.distributed import DistInfo
from stbava.pipeline.core.sources import collate


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The clip order of one epoch: a pure function of (seed, epoch), so resume replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, dist: DistInfo) -> list[list[int]]:
    """Global batches of ``batch_size`` clips; under DDP each rank takes its contiguous share of every batch.

    The global batch (and so the loss averaged over ranks) is the same for any world size, which is what makes
    multi-rank training reproduce single-process training. A rank whose share is empty (a last batch smaller
    than the world) gets ``[-1 - i]``: clip ``i`` with no annotated frame (see :class:`ZeroWeightPadding`).
    """
    order = epoch_order(n, seed, epoch)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if dist.world == 1:
        return batches
    out = []
    for b in batches:
        per = math.ceil(len(b) / dist.world)
        out.append(b[dist.rank * per:(dist.rank + 1) * per] or [-1 - b[0]])
    return out


class ZeroWeightPadding(Dataset):
    """``ds`` plus index ``-1 - i``: clip ``i`` with every frame marked unannotated.

    DDP all-reduces gradients on every rank at every step, so a rank with no clips of a global batch must still
    run forward and backward; with no annotated frame its loss and its gradient are exactly zero.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= 0:
            return self.ds[i]
        item = dict(self.ds[-1 - i])
        item["mask_valid"] = torch.zeros_like(torch.as_tensor(item["mask_valid"]))
        return item


def batch_loader(ds: Dataset, batches: list[list[int]], num_workers: int) -> DataLoader:
    """A DataLoader over exactly these index batches, collated into :class:`~stbava.pipeline.core.sources.Batch`.

    An explicit generator keeps the DataLoader from drawing on the global RNG (dropout's), so resume is exact.
    """
    return DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      generator=torch.Generator(), persistent_workers=False, pin_memory=False)
