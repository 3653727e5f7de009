"""Feature-cache throughput: zarr vs HDF5 (and their codecs) against a raw ``numpy.fromfile`` read.

Writes N frames of float16 ``[256,64,64]`` image embeddings (SAM's grid; 2 MiB each) as clips of T frames
through the real cache API (``create_cache``/``write_clip``, ``open_cache``/``image_embeddings``), then
reads every clip back in a shuffled order, as a training epoch does. The baseline reads the same bytes from
one flat ``.bin`` file with ``numpy.fromfile``. Two kinds of data bracket real embeddings: ``random``
(N(0,1), incompressible) and ``smooth`` (low-frequency sinusoids + 1 % noise, compressible like natural
feature maps). The page cache is warm (files were just written), so reads measure decode + Python overhead.

    python -m benchmarks.bench_cache            # default: 64 frames per case, < 60 s on 2 cores
    python -m benchmarks.bench_cache --frames 256 --data smooth --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from stbava.cache import create_cache, open_cache

EMB = (256, 64, 64)
CASES = [("zarr", "none"), ("zarr", "blosc-lz4"), ("zarr", "blosc-zstd"), ("zarr", "zstd"),
         ("hdf5", "none"), ("hdf5", "lzf"), ("hdf5", "gzip")]


def make_frames(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """``[n,256,64,64]`` float16 test embeddings."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, *EMB), dtype=np.float32).astype(np.float16)
    yy, xx = np.meshgrid(np.linspace(0, 1, EMB[1]), np.linspace(0, 1, EMB[2]), indexing="ij")
    out = np.empty((n, *EMB), np.float16)
    for i in range(n):
        f = rng.uniform(0.5, 3.0, (EMB[0], 2, 1, 1))
        ph = rng.uniform(0, 2 * np.pi, (EMB[0], 1, 1))
        smooth = np.sin(2 * np.pi * (f[:, 0] * yy + f[:, 1] * xx) + ph)
        out[i] = smooth + 0.01 * rng.standard_normal(smooth.shape)
    return out


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_raw(frames: np.ndarray, t: int, order: list[int], tmp: Path) -> dict[str, float]:
    path = tmp / "raw.bin"
    t0 = time.perf_counter()
    frames.tofile(path)
    write_s = time.perf_counter() - t0
    clip_bytes = t * frames[0].nbytes
    t0 = time.perf_counter()
    for c in order:
        arr = np.fromfile(path, dtype=np.float16, count=t * frames[0].size, offset=c * clip_bytes)
        arr.reshape(t, *EMB)
    read_s = time.perf_counter() - t0
    return {"write_s": write_s, "read_s": read_s, "bytes": disk_bytes(path)}


def bench_backend(backend: str, codec: str, frames: np.ndarray, t: int, order: list[int],
                  tmp: Path, tag: str) -> dict[str, float]:
    n_clips = frames.shape[0] // t
    ids = [f"clip{i:04d}" for i in range(n_clips)]
    path = tmp / f"{tag}-{backend}-{codec}{'.zarr' if backend == 'zarr' else '.h5'}"
    audio = np.zeros((t, 128), np.float32)
    t0 = time.perf_counter()
    with create_cache(path, backend, fingerprint={"bench": 1}, clips=[(c, "train") for c in ids], frames=t,
                      emb_shape=EMB, codec=codec) as w:
        for i, cid in enumerate(ids):
            w.write_clip(cid, frames[i * t:(i + 1) * t], audio)
    write_s = time.perf_counter() - t0
    reader = open_cache(path)
    reader.clip_ids("train")  # done flags are read once per reader, not per clip
    t0 = time.perf_counter()
    for c in order:
        got = reader.image_embeddings(ids[c])
    read_s = time.perf_counter() - t0
    np.testing.assert_array_equal(got, frames[order[-1] * t:(order[-1] + 1) * t])
    reader.close()
    return {"write_s": write_s, "read_s": read_s, "bytes": disk_bytes(path)}


def run(n_frames: int, t: int, kinds: list[str], tmp: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    n_frames -= n_frames % t
    order = list(np.random.default_rng(1).permutation(n_frames // t))
    for kind in kinds:
        frames = make_frames(kind, n_frames)
        raw = bench_raw(frames, t, order, tmp)
        mb = frames.nbytes / 2**20
        for backend, codec in [("raw", "fromfile"), *CASES]:
            if backend == "raw":
                r = raw
            else:  # one-clip warm-up first (imports, codec setup, thread pools) so it is not timed
                bench_backend(backend, codec, frames[:t], t, [0], tmp, f"warm-{kind}")
                r = bench_backend(backend, codec, frames, t, order, tmp, kind)
            rows.append({"data": kind, "backend": backend, "codec": codec,
                         "write_MBps": mb / r["write_s"], "read_MBps": mb / r["read_s"],
                         "read_vs_raw": raw["read_s"] / r["read_s"], "bytes_per_frame": r["bytes"] / n_frames,
                         "ratio": frames.nbytes / r["bytes"]})
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = f"{'data':<7} {'backend':<7} {'codec':<10} {'write MB/s':>10} {'read MB/s':>10} {'read/raw':>9} " \
           f"{'bytes/frame':>12} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['data']:<7} {r['backend']:<7} {r['codec']:<10} {r['write_MBps']:>10.0f} "
                     f"{r['read_MBps']:>10.0f} {r['read_vs_raw']:>8.2f}x {r['bytes_per_frame']:>12,.0f} "
                     f"{r['ratio']:>6.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames per case (2 MiB each)")
    ap.add_argument("--clip-frames", type=int, default=4, help="T, frames per clip (one write/read call)")
    ap.add_argument("--data", choices=["random", "smooth", "both"], default="both")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    kinds = ["random", "smooth"] if args.data == "both" else [args.data]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        t0 = time.perf_counter()
        rows = run(args.frames, args.clip_frames, kinds, Path(d))
        elapsed = time.perf_counter() - t0
    print(f"feature cache: {args.frames} frames of float16 {list(EMB)} per case, clips of {args.clip_frames}, "
          f"shuffled clip reads, warm page cache, {os.cpu_count()} CPUs, {elapsed:.0f} s")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
