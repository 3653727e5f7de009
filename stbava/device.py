"""Which device a command runs on, and when it autocasts: one resolver and one autocast rule for every stage."""

from __future__ import annotations

import torch

from stbava.config import ConfigError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else CPU; ``cuda`` -> ``cuda:LOCAL_RANK``.

    Args:
        name: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        local_rank: this process's GPU under torchrun (``LOCAL_RANK``); 0 in a single process.

    Raises:
        ConfigError: an unknown name, or CUDA asked for where torch sees none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def autocast_enabled(device: torch.device, amp: str) -> bool:
    """bf16 autocast on CUDA for ``auto``/``bf16``; on CPU only when ``bf16`` is asked for explicitly.

    Why not on CPU by default: bf16 matmuls are ~15x slower than fp32 on the 2-core CPUs we test on
    (ENV-NOTES §2).
    """
    if device.type == "cuda":
        return amp in ("auto", "bf16")
    return device.type == "cpu" and amp == "bf16"


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """``torch.autocast`` in bf16 on ``device``, enabled per :func:`autocast_enabled`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device, amp))
