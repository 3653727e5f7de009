"""Item 3: ``extract-features`` throughput vs the plain per-frame segment_anything loop, same weights/device.

Both sides start from the same SAM checkpoint file (written here from a random-init model in the official
layout) and from the same PNG frames, and are timed end to end: the baseline builds SAM with
``sam_model_registry`` (tiny: the same ``Sam`` class via :func:`stbava.testing.build_sam`), then per frame
reads it, resizes it and runs ``Sam.preprocess`` + ``image_encoder`` in fp32. ``run_extraction`` also
builds VGGish, embeds the audio and writes the zarr cache. MFU = frames/s x encoder FLOPs / peak.
A micro-benchmark compares SAM's attention with the SDPA path (:mod:`stbava.encoders.fast_attention`) on
one global and one windowed block of the encoder.

    python -m benchmarks.bench_extract              # vit_b, 1 clip of 2 frames, 2 rounds (CPU: ~3-4 min)
    python -m benchmarks.bench_extract --quick      # tiny encoder, 4 clips of 5 frames, 2 rounds
    python -m benchmarks.bench_extract --encoder vit_h --clips 16 --frames 5 --batch-size 8   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import device_line, encoder_flops, median, peak_flops, resolve, sync, table
from stbava import thirdparty
from stbava.cache import open_cache
from stbava.config import EncoderConfig
from stbava.data.clips import load_clips
from stbava.data.io import read_frame
from stbava.data.synthetic import write_synthetic
from stbava.data.transforms import frames_to_sam_input
from stbava.encoders.fast_attention import disable_sdpa, enable_sdpa
from stbava.encoders.image import encoder_kwargs
from stbava.pipeline.extract.features import run_extraction
from stbava.testing import build_sam, write_fake_sam_checkpoint


def plain_loop(encoder: str, checkpoint: Path, frame_paths: list[str], device: torch.device
               ) -> tuple[float, list[torch.Tensor]]:
    """The published way: build SAM from the checkpoint, then one fp32 frame at a time."""
    sync(device)
    t0 = time.perf_counter()
    if encoder == "tiny":
        sam = build_sam("tiny")
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    else:
        sam = thirdparty.sam_build().sam_model_registry[encoder](checkpoint=str(checkpoint))
    sam = sam.to(device).eval()
    out = []
    with torch.no_grad():
        for p in frame_paths:
            x = frames_to_sam_input([read_frame(p)], sam.image_encoder.img_size).to(device)
            out.append(sam.image_encoder(sam.preprocess(x)).cpu())
    sync(device)
    return time.perf_counter() - t0, out


def extraction(root: Path, cache: Path, encoder: str, checkpoint: Path, frames: int, device: str,
               amp: str, batch_size: int, num_workers: int, sdpa: bool | None) -> float:
    t0 = time.perf_counter()
    run_extraction(root, "ms3", cache, "zarr", EncoderConfig(name=encoder, sam_checkpoint=str(checkpoint)),
                   splits=["test"], batch_size=batch_size, device=device, amp=amp, frames=frames, progress=False,
                   num_workers=num_workers, sdpa=sdpa)
    return time.perf_counter() - t0


def attention_micro(encoder: str, device: torch.device, amp: bool, reps: int) -> list[dict[str, Any]]:
    """SAM attention vs SDPA on one global block (whole grid) and one windowed block (all windows)."""
    kw = encoder_kwargs(encoder)
    grid, dim, heads, win = kw["img_size"] // 16, kw["embed_dim"], kw["num_heads"], kw["window_size"]
    attn_cls = thirdparty.sam_modeling().image_encoder.Attention
    n_win = math.ceil(grid / win) ** 2
    rows = []
    for kind, size, batch in (("global", grid, 1), ("windowed", win, n_win)):
        m = attn_cls(dim, num_heads=heads, use_rel_pos=True, input_size=(size, size)).to(device).eval()
        with torch.no_grad():
            for p in (m.rel_pos_h, m.rel_pos_w):
                p.normal_(0, 0.02)
        x = torch.randn(batch, size, size, dim, device=device)
        times: dict[str, float] = {}
        outs = {}
        for mode in ("sam", "sdpa", "sam", "sdpa"):  # interleaved; the second of each pair is timed
            if mode == "sdpa":
                enable_sdpa(m)
            else:
                disable_sdpa(m)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    outs[mode] = m(x).float()
                sync(device)
            times[mode] = (time.perf_counter() - t0) / reps
        err = (outs["sdpa"] - outs["sam"]).abs().max().item()
        rows.append({"block": f"{kind} {batch}x{size}x{size}x{dim}", "sam_ms": times["sam"] * 1e3,
                     "sdpa_ms": times["sdpa"] * 1e3, "speedup": times["sam"] / times["sdpa"], "max_abs_diff": err})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = resolve(args.device)
    amp = args.amp or ("bf16" if dev.type == "cuda" else "off")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        root = write_synthetic(tmp / "data", "ms3", {"test": args.clips}, seed=0, frames=args.frames)
        ckpt = write_fake_sam_checkpoint(tmp / f"sam_{args.encoder}.pth", args.encoder, seed=0)
        clips = load_clips(root, "ms3", ["test"], frames=args.frames)
        paths = [p for c in clips for p in c.frame_paths[: args.frames]]
        base_s, ext_s = [], []
        ref: list[torch.Tensor] = []
        for r in range(args.rounds):  # interleaved rounds, alternating who goes first (ABBA...)
            cache = tmp / f"cache{r}.zarr"
            for side in ("base", "extract") if r % 2 == 0 else ("extract", "base"):
                if side == "base":
                    t, ref = plain_loop(args.encoder, ckpt, paths, dev)
                    base_s.append(t)
                else:
                    ext_s.append(extraction(root, cache, args.encoder, ckpt, args.frames, str(dev), amp,
                                            args.batch_size, args.num_workers, args.sdpa))
        reader = open_cache(cache)
        got = np.concatenate([reader.image_embeddings(c.id) for c in clips]).astype(np.float32)
        want = torch.cat(ref).numpy()
        rel_err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    n = len(paths)
    flops = encoder_flops(args.encoder)
    peak, peak_src = peak_flops(dev)
    b, e = median(base_s), median(ext_s)
    rows = [
        {"method": "plain per-frame SAM loop (fp32)", "s": b, "fps": n / b, "mfu": n / b * flops / peak},
        {"method": f"extract-features (batch {args.batch_size} clips, amp {amp}, "
                   f"sdpa {'auto' if args.sdpa is None else args.sdpa})", "s": e, "fps": n / e,
         "mfu": n / e * flops / peak},
    ]
    micro = attention_micro(args.encoder, dev, amp == "bf16", args.attn_reps) if args.attn_reps else []
    return {"encoder": args.encoder, "frames": n, "device": str(dev), "rows": rows, "ratio": b / e,
            "base_runs": base_s, "extract_runs": ext_s, "gflop_per_frame": flops / 1e9, "peak": peak_src,
            "rel_err_vs_plain": rel_err, "attention": micro}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny encoder, 4 clips of 5 frames, 2 rounds")
    ap.add_argument("--encoder", default=None, help="vit_b (default) | vit_l | vit_h | tiny")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None, help="T, frames per clip")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved baseline/extraction rounds")
    ap.add_argument("--batch-size", type=int, default=4, help="clips per encoder forward (CLI default 4)")
    ap.add_argument("--num-workers", type=int, default=2, help="decode workers (CLI default 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default=None, help="off | bf16 (default: bf16 on CUDA, off on CPU)")
    ap.add_argument("--sdpa", default=None, choices=["on", "off"], help="default: what extract-features does (on)")
    ap.add_argument("--attn-reps", type=int, default=None, help="attention micro-benchmark reps (0: skip)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.encoder = args.encoder or ("tiny" if args.quick else "vit_b")
    args.clips = args.clips or (4 if args.quick else 1)
    args.frames = args.frames or (5 if args.quick else 2)
    args.rounds = args.rounds or 2
    args.attn_reps = (10 if args.quick else 2) if args.attn_reps is None else args.attn_reps
    args.sdpa = None if args.sdpa is None else args.sdpa == "on"
    dev = resolve(args.device)
    print(device_line(dev))
    r = run(args)
    print(f"extraction, {r['encoder']} ({r['gflop_per_frame']:.0f} GFLOP/frame), {r['frames']} frames per side, "
          f"{len(r['base_runs'])} round(s), {r['device']}; MFU vs {r['peak']}:")
    print(table(r["rows"], [("method", "method", ""), ("s", "seconds", ".1f"), ("fps", "frames/s", ".3f"),
                            ("mfu", "MFU", ".1%")]))
    runs = ", ".join(f"{x:.1f}" for x in r["base_runs"]), ", ".join(f"{x:.1f}" for x in r["extract_runs"])
    print(f"  runs (s): plain loop {runs[0]}; extract-features {runs[1]} (rounds alternate who goes first)")
    print(f"  extract-features / plain loop: {r['ratio']:.2f}x (target >= 1.0x on CPU); cached embeddings vs plain "
          f"loop: relative error {r['rel_err_vs_plain']:.1e} (float16 storage)")
    if r["attention"]:
        print("attention block, SAM's manual softmax vs SDPA with the rel-pos bias as attn_mask:")
        print(table(r["attention"], [("block", "block", ""), ("sam_ms", "SAM ms", ".1f"), ("sdpa_ms", "SDPA ms", ".1f"),
                                     ("speedup", "speedup", ".2f"), ("max_abs_diff", "max |diff|", ".1e")]))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
