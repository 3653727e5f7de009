"""Shared benchmark helpers: device description, timing, FLOP counts, peak-FLOP estimates, tables.

Every benchmark measures the things it compares side by side in one process run (interleaved where the
machine is noisy) and prints ratios; absolute seconds on a shared CPU are only indicative.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU. fp32 runs are reported
# against the same bf16 peak (the question is how close stage one gets to what the GPU can do).
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10": 125e12, "4090": 165e12, "V100": 125e12}


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds for one call of ``fn`` (CUDA synchronised before and after) and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_peak_flops() -> float:
    """Rough fp32 peak of the CPU cores this process may use: cores x clock x 32 FLOP/cycle.

    32 = two 256-bit FMA pipes (or one 512-bit) x 8 fp32 lanes x 2; an estimate, labelled as such.
    """
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = max(mhz, float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return cpu_count() * (mhz or 2500.0) * 1e6 * 32


def peak_flops(device: torch.device) -> tuple[float, str]:
    """``(peak FLOP/s, how it was obtained)`` for MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for frag, peak in GPU_BF16_PEAK.items():
            if frag in name:
                return peak, f"{name} dense bf16 peak"
        return float("nan"), f"{name}: peak unknown"
    return cpu_peak_flops(), f"estimated fp32 peak of {cpu_count()} CPU cores"


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return (f"CPU {cpu_name()}, {cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {os.getloadavg()[0]:.1f}")


def now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width table; ``cols`` = (key, heading, format spec)."""
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([format(r[k], f) if r.get(k) is not None else "-" for k, _, f in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    left = [bool(rows) and isinstance(rows[0].get(k), str) for k, _, _ in cols]  # text left, numbers right
    lines = ["  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(row, widths, left)) for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def encoder_flops(name: str) -> float:
    """FLOPs (2 x MACs) of one SAM image-encoder forward on one frame, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from stbava import thirdparty
    from stbava.encoders.image import encoder_kwargs

    with torch.device("meta"):
        enc = thirdparty.sam_modeling().ImageEncoderViT(**encoder_kwargs(name))
        x = torch.empty(1, 3, enc.img_size, enc.img_size)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            enc(x)
    return float(fc.get_total_flops())


def fusion_config(encoder: str, frames: int, depth: int, fusion: str = "stbava", **train: Any) -> Any:
    from stbava.config import load_config

    model = {"depth": depth} if fusion == "stbava" else {"fusion": fusion}
    return load_config(None, {"frames": frames, "encoder": {"name": encoder}, "model": model,
                              "train": dict(train)})


def step_flops(encoder: str, frames: int, depth: int, batch: int = 1) -> float:
    """FLOPs of one stage-two training step (forward + backward) on ``[batch,frames]`` cached embeddings."""
    from torch.utils.flop_counter import FlopCounterMode

    from stbava.encoders.image import grid_size
    from stbava.losses import masked_bce
    from stbava.pipeline.core.net import build_fusion_net

    g = grid_size(encoder)
    with torch.device("meta"):
        net = build_fusion_net(fusion_config(encoder, frames, depth)).train()
        img = torch.empty(batch, frames, 256, g, g, dtype=torch.float16)
        with FlopCounterMode(display=False) as fc:
            logits = net(image_embeddings=img, audio_embeddings=torch.empty(batch, frames, 128))
            masked_bce(logits, torch.empty(batch, frames, 224, 224),
                       torch.ones(batch, frames, dtype=torch.bool)).backward()
    return float(fc.get_total_flops())


class TrainStep:
    """One stage-two optimiser step of ``Net(AVSModel, CachedEmbedder)`` on fixed random data."""

    def __init__(self, encoder: str, frames: int, depth: int, batch: int, device: torch.device,
                 amp: str = "auto", seed: int = 0, fusion: str = "stbava") -> None:
        from stbava.encoders.image import grid_size
        from stbava.pipeline.core.net import build_fusion_net
        from stbava.pipeline.train.loop import set_trainable, trainable_predicate
        from stbava.pipeline.train.stage2 import FUSION_PREFIXES

        g = grid_size(encoder)
        self.device, self.amp = device, amp
        self.net = build_fusion_net(fusion_config(encoder, frames, depth, fusion, seed=seed)).to(device).train()
        set_trainable(self.net, trainable_predicate(FUSION_PREFIXES))
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=1e-4)
        gen = torch.Generator().manual_seed(seed)
        self.image = torch.randn(batch, frames, 256, g, g, generator=gen).half().to(device)
        self.audio = torch.rand(batch, frames, 128, generator=gen).to(device)
        self.masks = (torch.rand(batch, frames, 224, 224, generator=gen) > 0.7).float().to(device)
        self.valid = torch.ones(batch, frames, dtype=torch.bool, device=device)

    def __call__(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                 masks: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> float:
        from stbava.device import autocast
        from stbava.losses import masked_bce

        image = self.image if image is None else image
        with autocast(self.device, self.amp):
            logits = self.net(image_embeddings=image, audio_embeddings=self.audio if audio is None else audio)
        loss = masked_bce(logits, self.masks if masks is None else masks, self.valid if valid is None else valid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def emit(result: Any, text: str, json_path: Path | None) -> Any:
    """Print a benchmark's report and, where asked, write its raw result as JSON (for ``make bench --json-dir``)."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))
    return result
