"""Item 7: every stage against the machine's own limit: achieved FLOP/s over the matmul peak of the same dtype.

Per stage (image-encoder forward at extraction for ``tiny``, ``vit_b`` and SAM 2's Hiera-T when ``sam2`` is
installed; the cached stage-two training step at SAM's 64x64 grid, forward + backward + Adam; evaluation,
the same network's forward), the FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
float32 run (autocast changes dtypes, not the op sequence, so bf16 runs the same FLOPs), then the stage is
timed in float32 and, where the device has native bf16 (:mod:`stbava.bf16` on CPU), under bf16 autocast.
The peak is a ``[n,n] @ [n,n]`` matmul of the same dtype on the same threads, measured before and after
the stages in this run (the best of both: the ratio is then a lower bound).

    python -m benchmarks.bench_roofline             # tiny x8, vit_b x1, Hiera-T x1, step T=2 depth 5 (CPU: ~2 min)
    python -m benchmarks.bench_roofline --quick     # tiny encoder and the tiny 16x16 grid (seconds)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import TrainStep, cpu_name, device_line, emit, median, resolve, sync, table
from stbava.device import autocast

aten = torch.ops.aten


def _sdpa_flops(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """``softmax(q k^T) v`` on ``[..., L, d]`` shapes: two batched matmuls."""
    batch = 1
    for n in q[:-2]:
        batch *= n
    return 2 * batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(q, k, v)


def _cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * _sdpa_flops(q, k, v)  # grad of v and of the scores, then of q and k: four matmuls of that size


# FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel that F.scaled_dot_product_attention
# picks on CPU (SAM's encoder with stbava's SDPA path, SAM 2's Hiera): without these it would count 0 for them.
CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (matmuls, convolutions and attention; 2 per multiply-add)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as fc:
        fn()
    return float(fc.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, reps: int = 5) -> float:
    """Best FLOP/s of an ``[n,n] @ [n,n]`` matmul in ``dtype`` (n = 2048 on CPU, 8192 on a GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bf16_native(device: torch.device) -> bool:
    """Whether this run also measures bf16: CUDA with bf16, or a CPU the detector finds native."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from stbava.bf16 import cpu_bf16

    return cpu_bf16().native


def _inference(enc: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[str], Callable[[], Any]]:
    """``amp -> fn``: one inference-mode forward of ``enc`` on ``x`` under that autocast."""
    def make(amp: str) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.inference_mode(), autocast(device, amp):
                return enc(x)
        return fn
    return make


def encoder_stage(name: str, frames: int, device: torch.device) -> Callable[[str], Callable[[], Any]]:
    """``amp -> fn``: the extraction image encoder (as :func:`build_frozen_encoders` builds it) on ``frames``."""
    from stbava.encoders.fast_attention import enable_sdpa
    from stbava.encoders.image import build_image_encoder, image_size

    enc = build_image_encoder(name, seed=0)
    enable_sdpa(enc)  # extraction's default (EncoderConfig.sdpa)
    enc = enc.to(device)
    s = image_size(name)
    x = (torch.rand(frames, 3, s, s, generator=torch.Generator().manual_seed(0)) * 255).to(device)
    return _inference(enc, x, device)


def hiera_stage(frames: int, device: torch.device) -> Callable[[str], Callable[[], Any]] | None:
    """SAM 2.1 Hiera-T trunk + FPN neck at 1024 px (the ``sam2.1_hiera_t.yaml`` sizes), or None without sam2."""
    try:
        from sam2.modeling.backbones.hieradet import Hiera
        from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
        from sam2.modeling.position_encoding import PositionEmbeddingSine
    except ImportError:
        return None
    torch.manual_seed(0)
    trunk = Hiera(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                  window_pos_embed_bkg_spatial_size=(7, 7))
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000),
                   d_model=256, backbone_channel_list=[768, 384, 192, 96], fpn_top_down_levels=[2, 3],
                   fpn_interp_model="nearest")
    enc = ImageEncoder(trunk=trunk, neck=neck, scalp=1).to(device).eval()
    x = torch.randn(frames, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)).to(device)
    return _inference(enc, x, device)


def step_stage(encoder: str, frames: int, depth: int, device: torch.device) -> Callable[[str], Callable[[], Any]]:
    """The stage-two optimiser step (``benchmarks.common.TrainStep``) on ``[1,frames]`` cached embeddings."""
    steps: dict[str, TrainStep] = {}

    def make(amp: str) -> Callable[[], Any]:
        steps.setdefault(amp, TrainStep(encoder, frames, depth, batch=1, device=device, amp=amp))
        return steps[amp]
    return make


def eval_stage(encoder: str, frames: int, depth: int, device: torch.device) -> Callable[[str], Callable[[], Any]]:
    """Evaluation's forward of the same network (eval mode, no autograd), as ``evaluate_net`` runs it."""
    step = TrainStep(encoder, frames, depth, batch=1, device=device, amp="off")
    step.net.eval()

    def make(amp: str) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.inference_mode(), autocast(device, amp):
                return step.net(image_embeddings=step.image, audio_embeddings=step.audio)
        return fn
    return make


def measure(make: Callable[[str], Callable[[], Any]], amps: list[str], reps: int, device: torch.device
            ) -> tuple[float, dict[str, list[float]]]:
    """``(FLOPs of one call, {amp: seconds per timed call})``; the float32 count run is its warm-up."""
    flops = count_flops(make("off"))
    times: dict[str, list[float]] = {}
    for amp in amps:
        fn = make(amp)
        if amp != "off":
            fn()  # warm-up: kernels, autocast weight casts, Adam state
        times[amp] = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[amp].append(time.perf_counter() - t0)
    return flops, times


def stages(quick: bool, frames: int, depth: int, device: torch.device) -> list[tuple[str, Any, int]]:
    """``(name, amp -> fn, timed reps)`` per stage of this run."""
    enc = "tiny" if quick else "vit_b"
    out: list[tuple[str, Any, int]] = [("extract: tiny image encoder, 8 frames 256 px", encoder_stage("tiny", 8, device), 3)]
    if not quick:
        out.append(("extract: vit_b image encoder, 1 frame 1024 px", encoder_stage("vit_b", 1, device), 1))
        hiera = hiera_stage(1, device)
        if hiera is not None:
            out.append(("extract: SAM 2.1 Hiera-T + FPN, 1 frame 1024 px", hiera, 1))
    g = 16 if quick else 64
    out.append((f"train step: T={frames}, depth {depth}, {g}x{g} grid, fwd+bwd+Adam",
                step_stage(enc, frames, depth, device), 2))
    out.append((f"eval forward: T={frames}, depth {depth}, {g}x{g} grid", eval_stage(enc, frames, depth, device), 3))
    return out


def run(quick: bool, frames: int, depth: int, device: torch.device) -> dict[str, Any]:
    dtypes = {"off": torch.float32}
    if bf16_native(device):
        dtypes["bf16"] = torch.bfloat16
    peaks = {amp: [matmul_peak(device, dt)] for amp, dt in dtypes.items()}
    rows = []
    for name, make, reps in stages(quick, frames, depth, device):
        flops, times = measure(make, list(dtypes), reps, device)
        print(f"  {name}: {flops / 1e9:.1f} GFLOP, " + ", ".join(
            f"{'fp32' if a == 'off' else a} {median(ts):.2f} s" for a, ts in times.items()), flush=True)
        for amp, ts in times.items():
            rows.append({"stage": name, "dtype": "fp32" if amp == "off" else "bf16", "amp": amp,
                         "gflop": flops / 1e9, "s": median(ts), "runs": ts})
    for amp, dt in dtypes.items():
        peaks[amp].append(matmul_peak(device, dt))
    peak = {amp: max(p) for amp, p in peaks.items()}
    fp32_s = {r["stage"]: r["s"] for r in rows if r["amp"] == "off"}
    for r in rows:
        r["gflops"] = r["gflop"] / r["s"]
        r["peak_gflops"] = peak[r["amp"]] / 1e9
        r["of_peak"] = r["gflops"] / r["peak_gflops"]
        r["vs_fp32"] = fp32_s[r["stage"]] / r["s"]
    return {"device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "peaks_gflops": {("fp32" if a == "off" else "bf16"): [x / 1e9 for x in p] for a, p in peaks.items()},
            "bf16": "bf16" in dtypes, "rows": rows}


def cpu_flags_line() -> str:
    from stbava.bf16 import BF16_FLAGS, read_cpuinfo

    _, flags = read_cpuinfo()
    vec = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")) or f in BF16_FLAGS)
    return f"{torch.backends.cpu.get_cpu_capability()} kernels; flags: {' '.join(vec) or 'unknown'}"


def report(r: dict[str, Any]) -> str:
    peaks = ", ".join(f"{k} {max(v):.0f} GFLOP/s (before {v[0]:.0f}, after {v[1]:.0f})"
                      for k, v in r["peaks_gflops"].items())
    head = [f"roofline on {r['device']} ({r['cpu']}, {r['threads']} threads); matmul peak: {peaks}"]
    if r["device"] == "cpu":
        head.append(f"  {cpu_flags_line()}")
    if not r["bf16"]:
        head.append("  bf16: not native on this device (stbava.bf16), so measured in fp32 only")
    cols = [("stage", "stage", ""), ("dtype", "dtype", ""), ("gflop", "GFLOP", ".1f"), ("s", "seconds", ".3f"),
            ("gflops", "GFLOP/s", ".1f"), ("peak_gflops", "peak", ".0f"), ("of_peak", "of peak", ".0%"),
            ("vs_fp32", "vs fp32", ".2f")]
    return "\n".join(head + [table(r["rows"], cols)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny encoder and 16x16 grid only (smoke test)")
    ap.add_argument("--frames", type=int, default=2, help="T of the training step and eval forward")
    ap.add_argument("--depth", type=int, default=5, help="ST-BAVA blocks")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    dev = resolve(args.device)
    print(device_line(dev))
    r = run(args.quick, args.frames, args.depth, dev)
    return emit(r, report(r), args.json)


if __name__ == "__main__":
    main()
