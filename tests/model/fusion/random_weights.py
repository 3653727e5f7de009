"""Shared by the fusion-module tests: seeded generators for their inputs, and random weights for a module before
comparing it with a reference."""

import torch
from torch import nn


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: each input of a test drawn from its own, independent of the others."""
    return torch.Generator().manual_seed(seed)


def randomise(m: nn.Module, seed: int) -> None:
    """Every weight random (LayerNorm gains around 1), so no default init can hide a term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(noise + 1 if "norm" in name and name.endswith("weight") else noise)
