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

    Why not on CPU by default: results stay the same on every machine, and whether bf16 is fast on a CPU
    depends on the CPU (~15x slower without AVX512-BF16/AMX, ~2.8x faster with it): :func:`check_amp`
    refuses it where it is not native.
    """
    if device.type == "cuda":
        return amp in ("auto", "bf16")
    return device.type == "cpu" and amp == "bf16"


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """``torch.autocast`` in bf16 on ``device``, enabled per :func:`autocast_enabled`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device, amp))


def check_amp(device: torch.device, amp: str, what: str, off: str) -> dict[str, object]:
    """The numerics a stage will run with, after refusing bf16 on a CPU without native bf16.

    Called once by every stage that autocasts (extraction, training, evaluation) before any work, and its
    result recorded (cache manifest, checkpoint, eval report): bf16 changes the values, and on CPU whether
    it is fast depends on the CPU (:mod:`stbava.bf16`), so neither is left to be guessed.

    Args:
        what: the option that asked, for the message, e.g. ``"--amp bf16"``.
        off: the setting that avoids bf16, e.g. ``"--amp off"``.

    Returns:
        ``{"dtype": "bfloat16" | "float32", "device": "cpu" | "cuda", "cpu_bf16": Bf16Check dict | None}``
        (``cpu_bf16`` only where bf16 was asked for on CPU: the detector's answer that allowed it).

    Raises:
        ConfigError: bf16 asked for on a CPU that does not run it natively; the message has the measured slowdown.
    """
    from stbava.bf16 import cpu_bf16, refusal

    on = autocast_enabled(device, amp)
    check = None
    if on and device.type == "cpu":
        check = cpu_bf16()
        if not check.native:
            raise ConfigError(refusal(check, what, off))
    return {"dtype": "bfloat16" if on else "float32", "device": device.type,
            "cpu_bf16": check.to_dict() if check else None}
