"""Items 2 and 5: the training data path. Cache -> ``CachedClips`` -> DataLoader, vs raw reads, vs resident.

A synthetic AVSBench set (PNG masks) gets a cache of random float16 ``[T,256,64,64]`` embeddings (vit-sized,
incompressible) in zarr (default codec) and HDF5 (default codec). Measured in one run, shuffled clip order:

- raw: the same image bytes read per clip with ``numpy.fromfile`` from one flat file (``bench_cache.bench_raw``);
- loader: the training loader (``CachedClips`` + ``collate``, masks decoded from PNG) with 0 and 2 workers;
- resident: ``ResidentClips`` (``train.gpu_resident``), batches by indexing device tensors;
- training clips/s with the loader and with ``ResidentClips`` (real stage-two steps, vit_b grid), and the
  loader's wait per step next to the step time: does the loader starve a step?

    python -m benchmarks.bench_loader            # 16 clips of T=5 (160 MiB per backend) + 5 training steps
    python -m benchmarks.bench_loader --quick    # 6 clips of T=2, depth-1 steps
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.bench_cache import bench_raw, make_frames
from benchmarks.common import TrainStep, device_line, peak_flops, resolve, step_flops, sync, table
from stbava.cache import create_cache
from stbava.data.clips import load_clips
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.core.sources import Batch, CachedClips, collate
from stbava.pipeline.train.resident import ResidentClips

EMB = (256, 64, 64)
BACKENDS = (("zarr", "blosc-lz4"), ("hdf5", "none"))


def write_cache(path: Path, backend: str, codec: str, ids: list[str], frames: np.ndarray, t: int) -> None:
    audio = np.zeros((t, 128), np.float32)
    with create_cache(path, backend, fingerprint={"bench": "loader"}, clips=[(c, "train") for c in ids],
                      frames=t, emb_shape=EMB, codec=codec) as w:
        for i, cid in enumerate(ids):
            w.write_clip(cid, frames[i * t:(i + 1) * t], audio)


def loader_epoch(ds: CachedClips, batches: list[list[int]], workers: int, device: torch.device
                 ) -> tuple[float, list[float]]:
    """Seconds for one epoch of batches (moved to ``device``) and the wait for each batch."""
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    waits = []
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        t1 = time.perf_counter()
        try:
            batch = next(it).to(device)
        except StopIteration:
            break
        sync(device)
        waits.append(time.perf_counter() - t1)
    del batch
    return time.perf_counter() - t0, waits


def resident_epoch(res: ResidentClips, batches: list[list[int]], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for b in res.batches(batches):
        b.to(device)
    sync(device)
    return time.perf_counter() - t0


def train_rate(step: TrainStep, source: Any, batches: list[list[int]], device: torch.device) -> float:
    """Clips/s of real training steps fed from ``source`` (an iterator of Batches)."""
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for batch in source:
        batch: Batch = batch.to(device)
        step(batch.image_embeddings, batch.audio_embeddings, batch.masks, batch.mask_valid)
        n += len(batch.clip_ids)
    sync(device)
    return n / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = resolve(args.device)
    t, n_clips, bs = args.frames, args.clips, args.batch
    order = [int(i) for i in np.random.default_rng(1).permutation(n_clips)]
    batches = [order[i:i + bs] for i in range(0, n_clips, bs)]
    frames = make_frames("random", n_clips * t)
    mib = frames.nbytes / 2**20
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"frames": t, "clips": n_clips, "batch": bs, "device": str(dev), "MiB": mib}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        root = write_synthetic(tmp / "data", "ms3", {"train": n_clips}, seed=0, frames=t)
        clips = load_clips(root, "ms3", ["train"], frames=t)
        ids = [c.id for c in clips]
        raw = bench_raw(frames, t, order, tmp)
        rows.append({"path": "raw numpy.fromfile (image bytes only)", "clips_s": n_clips / raw["read_s"],
                     "MBps": mib / raw["read_s"], "vs_raw": 1.0})
        datasets = {}
        for backend, codec in BACKENDS:
            path = tmp / f"cache_{backend}{'.zarr' if backend == 'zarr' else '.h5'}"
            write_cache(path, backend, codec, ids, frames, t)
            datasets[backend] = ds = CachedClips(path, clips, t)
            loader_epoch(ds, batches[:1], 0, dev)  # warm-up: imports, codec setup
            for w in args.workers:
                s, waits = loader_epoch(ds, batches, w, dev)
                rows.append({"path": f"loader {backend}/{codec}, {w} workers", "clips_s": n_clips / s,
                             "MBps": mib / s, "vs_raw": raw["read_s"] / s,
                             "wait_ms": 1e3 * float(np.mean(waits)) / bs})
        t0 = time.perf_counter()
        res = ResidentClips(datasets["zarr"], dev)
        load_s = time.perf_counter() - t0
        s = resident_epoch(res, batches, dev)
        rows.append({"path": f"resident on {dev.type} (ResidentClips)", "clips_s": n_clips / s, "MBps": mib / s,
                     "vs_raw": raw["read_s"] / s, "wait_ms": 1e3 * s / n_clips})
        out.update(rows=rows, resident_load_s=load_s)
        if args.steps:
            step = TrainStep("vit_b", t, args.depth, batch=bs, device=dev)
            step()  # warm-up
            ds0 = datasets["zarr"]
            sb = batches[: args.steps]
            lo = train_rate(step, DataLoader(ds0, batch_sampler=sb, num_workers=0, collate_fn=collate), sb, dev)
            rs = train_rate(step, res.batches(sb), sb, dev)
            lo2 = train_rate(step, DataLoader(ds0, batch_sampler=sb, num_workers=0, collate_fn=collate), sb, dev)
            out.update(train_loader_clips_s=(lo + lo2) / 2, train_resident_clips_s=rs, step_depth=args.depth,
                       step_s_per_clip=1 / rs)
    out["step_gflop_per_clip"] = step_flops("vit_b", t, args.depth) / 1e9
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 clips of T=2, depth-1 training steps")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None, help="T, frames per clip (default 5)")
    ap.add_argument("--batch", type=int, default=None, help="clips per batch")
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts to try")
    ap.add_argument("--steps", type=int, default=None, help="training steps per source (0: skip)")
    ap.add_argument("--depth", type=int, default=None, help="ST-BAVA depth of the training steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.clips = args.clips or (6 if args.quick else 16)
    args.frames = args.frames or (2 if args.quick else 5)
    args.batch = args.batch or (2 if args.quick else 1)
    args.steps = 2 if args.steps is None else args.steps
    args.depth = args.depth or (1 if args.quick else 5)
    args.workers = [int(w) for w in args.workers.split(",")]
    dev = resolve(args.device)
    print(device_line(dev))
    r = run(args)
    print(f"training data path: {r['clips']} clips of T={r['frames']} float16 [256,64,64] ({r['MiB']:.0f} MiB, random), "
          f"batches of {r['batch']}, shuffled, warm page cache, {r['device']}:")
    print(table(r["rows"], [("path", "path", ""), ("clips_s", "clips/s", ".1f"), ("MBps", "MB/s", ".0f"),
                            ("vs_raw", "vs raw", ".2f"), ("wait_ms", "wait ms/clip", ".1f")]))
    print(f"  ResidentClips load (once): {r['resident_load_s']:.2f} s; target loader >= 0.5x raw")
    if "train_loader_clips_s" in r:
        step_ms = 1e3 * r["step_s_per_clip"]
        waits = [x["wait_ms"] for x in r["rows"] if "loader" in x["path"]]
        print(f"  training (vit_b grid, T={r['frames']}, depth {r['step_depth']}): loader {r['train_loader_clips_s']:.3f} "
              f"clips/s, resident {r['train_resident_clips_s']:.3f} clips/s "
              f"({r['train_resident_clips_s'] / r['train_loader_clips_s']:.2f}x); step {step_ms:.0f} ms/clip vs "
              f"loader wait {max(waits):.1f} ms/clip at most -> loader/step {max(waits) / step_ms:.3f}")
        peak, src = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else (989e12, "H100 bf16 peak")
        gpu_ms = 1e3 * r["step_gflop_per_clip"] * 1e9 / (0.4 * peak)
        print(f"  a step is {r['step_gflop_per_clip']:.0f} GFLOP/clip: at 40% of the {src} it takes ~{gpu_ms:.1f} ms/clip, "
              f"so a GPU needs {1e3 / gpu_ms:.0f} clips/s from the data path")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
