"""Item 6: how a stage-two step's time and memory grow with T, batch size and ST-BAVA depth.

Each config runs in its own subprocess, so its peak memory is its own: the peak RSS (CPU: VmHWM, reset
via /proc/self/clear_refs once the model and data are built, minus the RSS then, so the number is the
step's working memory; ``ru_maxrss`` where /proc is missing) or
``torch.cuda.max_memory_allocated`` (GPU). A B=T=1 warm-up step, then two steps per config; the faster one is reported.
Per block, the temporal attention is T x T per pixel (B*HW sequences of length T) and the spatial
attention runs over the HW pixels of each frame, so FLOPs and activations grow ~linearly in B*T*HW*depth.

    python -m benchmarks.bench_scaling             # 64x64 grid (vit sizes), 5 configs around T=2, B=1, depth 3
    python -m benchmarks.bench_scaling --quick     # 16x16 grid (tiny encoder)
    python -m benchmarks.bench_scaling --configs 5x1x5,5x4x5,10x1x7   # TxBxdepth
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import TrainStep, device_line, resolve, step_flops, sync, table

DEFAULT = "2x1x3,4x1x3,2x2x3,2x1x1,2x1x5"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) at the current RSS; False where Linux refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM (this process image's peak RSS; unlike ru_maxrss it does not start at the forking parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def one(encoder: str, t: int, b: int, depth: int, device: str, threads: int, steps: int) -> dict[str, Any]:
    """Run in a fresh process: build, then time ``steps`` steps and read the peak memory."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve(device)
    step = TrainStep(encoder, t, depth, batch=b, device=dev)
    sync(dev)
    _reset_peak_rss()
    base = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    step(step.image[:1, :1], step.audio[:1, :1], step.masks[:1, :1], step.valid[:1, :1])  # cheap warm-up (B=T=1)
    times = []
    for _ in range(steps):
        sync(dev)
        t0 = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = _peak_rss_bytes()
    return {"T": t, "B": b, "depth": depth, "step_s": min(times), "steps": times,
            "mem_MiB": (peak - base) / 2**20, "peak_MiB": peak / 2**20,
            "gflop": step_flops(encoder, t, depth, b) / 1e9}


def run(encoder: str, configs: list[tuple[int, int, int]], device: str, threads: int, steps: int
        ) -> list[dict[str, Any]]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    rows = []
    for t, b, depth in configs:
        cmd = [sys.executable, "-m", "benchmarks.bench_scaling", "--one", f"{t}x{b}x{depth}", "--encoder", encoder,
               "--device", device, "--threads", str(threads), "--steps", str(steps)]
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    for r in rows:
        r["time_per_frame_s"] = r["step_s"] / (r["B"] * r["T"])
        r["gflop_s"] = r["gflop"] / r["step_s"]
        r["rel_time"], r["rel_gflop"] = r["step_s"] / base["step_s"], r["gflop"] / base["gflop"]
        r["rel_mem"] = r["mem_MiB"] / base["mem_MiB"] if base["mem_MiB"] > 0 else float("nan")
    return rows


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in text.split(","):
        t, b, d = (int(x) for x in part.lower().split("x"))
        out.append((t, b, d))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny encoder grid (16x16)")
    ap.add_argument("--encoder", default=None, help="grid source: vit_b (64x64, default) | tiny (16x16)")
    ap.add_argument("--configs", default=DEFAULT, help="comma list of TxBxdepth; the first is the reference")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each subprocess (0: default)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    encoder = args.encoder or ("tiny" if args.quick else "vit_b")
    if args.one:
        t, b, d = parse_configs(args.one)[0]
        print(json.dumps(one(encoder, t, b, d, args.device, args.threads, args.steps)))
        return []
    dev = resolve(args.device)
    threads = args.threads or torch.get_num_threads()
    print(device_line(dev))
    rows = run(encoder, parse_configs(args.configs), str(dev), threads, args.steps)
    g = 16 if encoder == "tiny" else 64
    mem = "peak CUDA allocated above the built model" if dev.type == "cuda" else "peak RSS above the built model"
    print(f"stage-two step scaling at the {g}x{g} grid ({encoder}), {dev}; memory = {mem}:")
    print(table(rows, [("T", "T", "d"), ("B", "B", "d"), ("depth", "depth", "d"), ("step_s", "step s", ".2f"),
                       ("time_per_frame_s", "s/frame", ".2f"), ("gflop", "GFLOP", ".0f"), ("gflop_s", "GFLOP/s", ".1f"),
                       ("mem_MiB", "mem MiB", ".0f"), ("rel_time", "time x", ".2f"), ("rel_gflop", "FLOP x", ".2f"),
                       ("rel_mem", "mem x", ".2f")]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
