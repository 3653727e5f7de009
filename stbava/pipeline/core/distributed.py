"""torchrun / DistributedDataParallel support, inert in a single process.

Under ``torchrun`` the environment carries RANK/WORLD_SIZE; we initialise the default process group (NCCL on
CUDA, gloo on CPU) once and expose the few collective operations the loop and evaluation need.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, net: nn.Module) -> nn.Module:
        """DDP-wrap for training; the plain module in a single process.

        ``find_unused_parameters``: SAM's mask decoder computes an IoU head (and ablations drop whole blocks)
        whose trainable parameters never reach the loss; without it DDP fails on the second step.
        """
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(net.parameters()).device
        return DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)

    def global_mean_loss(self, loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Rescale a rank-local mean so DDP's gradient average equals the gradient of the global mean."""
        if not self.active:
            return loss
        n_local = valid.float().sum()
        n_all = n_local.detach().clone()
        tdist.all_reduce(n_all)
        return loss * n_local * self.world / n_all.clamp_min(1.0)

    def mean_scalar(self, value: torch.Tensor) -> float:
        if not self.active:
            return float(value)
        v = value.detach().float().reshape(1).clone()
        tdist.all_reduce(v)
        return float(v) / self.world

    def all_gather_objects(self, obj: object) -> list[object]:
        if not self.active:
            return [obj]
        out: list[object] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


_INFO: DistInfo | None = None


def dist_info() -> DistInfo:
    """Initialise the process group once if launched by torchrun; otherwise a single-process DistInfo."""
    global _INFO
    if _INFO is not None:
        return _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _INFO = DistInfo()
        return _INFO
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend)
        # Tear the group down before interpreter exit: a process that exits with it alive (e.g. a rank done
        # before rank 0) can die in C++ ("terminate called without an active exception", SIGABRT).
        atexit.register(_destroy)
    _INFO = DistInfo(rank=rank, world=world, local_rank=local)
    return _INFO


def _destroy() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
