"""Item 1: a stage-two training step on cached embeddings vs re-running the frozen encoder every step.

The re-run step is the published code's approach: ``FrozenImageEncoder`` on the clip's T frames under
``no_grad``, then the same step; the cached step is ``Net(AVSModel, CachedEmbedder)`` on ``[1,T,256,g,g]``
embeddings. Same architecture and grid (vit_b at 1024 -> 64x64), steps interleaved in one process. The
FLOP-bound ratio ``1 + T * encoder_flops / step_flops`` is printed beside the measured one (and for vit_h).

    python -m benchmarks.bench_step                 # vit_b, T=2, warm-up + 2 cached + 1 re-run step (CPU: ~2 min)
    python -m benchmarks.bench_step --quick         # tiny encoder (smoke test, seconds)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import TrainStep, device_line, emit, encoder_flops, median, resolve, step_flops, timed
from stbava.encoders.image import build_image_encoder, image_size


def run(encoder: str, frames: int, depth: int, cached_reps: int, rerun_reps: int, device: torch.device,
        amp: str) -> dict[str, Any]:
    step = TrainStep(encoder, frames, depth, batch=1, device=device, amp=amp)
    image_encoder = build_image_encoder(encoder, seed=0).to(device)
    s = image_size(encoder)
    pixels = (torch.rand(frames, 3, s, s, generator=torch.Generator().manual_seed(1)) * 255).to(device)

    def rerun() -> float:
        with torch.no_grad():
            emb = image_encoder(pixels).unsqueeze(0)  # [1,T,256,g,g], fp32 as the published code
        return step(image=emb)

    timed(step, device)  # warm-up: allocator, autograd graph, Adam state
    cached, rerun_s = [], []
    for i in range(max(cached_reps, rerun_reps)):  # interleaved, so load changes hit both
        if i < cached_reps:
            cached.append(timed(step, device)[0])
        if i < rerun_reps:
            rerun_s.append(timed(rerun, device)[0])
    c, r = median(cached), median(rerun_s)
    enc_f, st_f = encoder_flops(encoder), step_flops(encoder, frames, depth)
    h_f = encoder_flops("vit_h") if encoder != "tiny" else None
    return {"encoder": encoder, "frames": frames, "depth": depth, "device": str(device),
            "cached_step_s": c, "rerun_step_s": r, "encoder_s": r - c, "speedup": r / c,
            "cached_runs": cached, "rerun_runs": rerun_s,
            "encoder_gflop_per_frame": enc_f / 1e9, "step_gflop": st_f / 1e9,
            "flop_bound_speedup": 1 + frames * enc_f / st_f,
            "flop_bound_speedup_vit_h": (1 + frames * h_f / st_f) if h_f else None}


def runs(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def report(r: dict[str, Any]) -> str:
    rows = [
        ("cached step (Net + CachedEmbedder)", f"{r['cached_step_s']:8.2f} s", f"runs: {runs(r['cached_runs'])}"),
        (f"re-run step ({r['encoder']} x{r['frames']} + step)", f"{r['rerun_step_s']:8.2f} s",
         f"runs: {runs(r['rerun_runs'])}"),
        ("speedup of the cache", f"{r['speedup']:8.1f}x", "target >= 20x"),
        ("FLOP-bound speedup", f"{r['flop_bound_speedup']:8.1f}x",
         f"encoder {r['encoder_gflop_per_frame']:.0f} GFLOP/frame, step {r['step_gflop']:.0f} GFLOP fwd+bwd"),
    ]
    if r["flop_bound_speedup_vit_h"]:
        rows.append(("FLOP-bound speedup with vit_h", f"{r['flop_bound_speedup_vit_h']:8.1f}x",
                     "published setting: 5.96 TFLOP/frame"))
    head = (f"training step, B=1 clip of T={r['frames']} frames, ST-BAVA depth {r['depth']}, {r['encoder']} grid, "
            f"{r['device']}:")
    return "\n".join([head] + [f"  {a:<38}{b}  ({c})" for a, b, c in rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny encoder, 16x16 grid (smoke test)")
    ap.add_argument("--encoder", default=None, help="vit_b (default) | vit_l | vit_h | tiny")
    ap.add_argument("--frames", type=int, default=2, help="T, frames per clip")
    ap.add_argument("--depth", type=int, default=5, help="ST-BAVA blocks")
    ap.add_argument("--cached-reps", type=int, default=2)
    ap.add_argument("--rerun-reps", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="stage-two amp: auto (bf16 on CUDA) | bf16 | off")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    encoder = args.encoder or ("tiny" if args.quick else "vit_b")
    dev = resolve(args.device)
    print(device_line(dev))
    r = run(encoder, args.frames, args.depth, args.cached_reps, args.rerun_reps, dev, args.amp)
    return emit(r, report(r), args.json)


if __name__ == "__main__":
    main()
