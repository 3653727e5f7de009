"""``make bench`` = ``python -m benchmarks``: every benchmark, one after the other, in one run.

    python -m benchmarks                 # short default (2-core CPU: ~10 min; vit_b-sized where it matters)
    python -m benchmarks --quick         # smoke test of every benchmark (tiny encoder, small data; ~2 min)
    python -m benchmarks --only step,extract --json-dir out/   # a selection; JSON per benchmark

Each benchmark prints its own table with ratios measured side by side in this run; the exact command of
each part is printed above it, so a number can be re-measured alone (results: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import device_line, now, resolve

ROOT = Path(__file__).resolve().parents[1]

# name -> (module, default argv, --quick argv, what it answers)
BENCHES: dict[str, tuple[str, list[str], list[str], str]] = {
    "step": ("benchmarks.bench_step", [], ["--quick"], "1. cached training step vs re-running the encoder"),
    "loader": ("benchmarks.bench_loader", ["--steps", "1"], ["--quick", "--steps", "1"],
               "2+5. cache -> DataLoader vs raw reads; GPU-resident clips; loader vs step"),
    "extract": ("benchmarks.bench_extract", [], ["--quick"], "3. extract-features vs the plain SAM loop"),
    "cache": ("benchmarks.bench_cache", ["--frames", "32"], ["--frames", "8", "--data", "smooth"],
              "4. storage: bytes per frame per backend/codec, store-level read/write"),
    "scaling": ("benchmarks.bench_scaling", [], ["--quick", "--configs", "1x1x1,2x1x1,2x2x1,2x1x3"],
                "6. step time and memory vs T, batch, depth"),
    "roofline": ("benchmarks.bench_roofline", [], ["--quick"],
                 "7. every stage's FLOP/s against the matmul peak of its dtype (fp32, and bf16 where native)"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks that every benchmark runs")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list out of {', '.join(BENCHES)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (cache/loader I/O runs on the host)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json-dir", type=Path, default=None, help="write <name>.json per benchmark here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        torch.set_num_threads(args.threads)
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve(args.device)
    print(f"stbava benchmarks, {now()}, {device_line(dev)}")
    print(f"command: python -m benchmarks {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    t_all = time.perf_counter()
    failed = 0
    for name in names:
        module, default, quick, what = BENCHES[name]
        sub = list(quick if args.quick else default)
        if name != "cache":
            sub += ["--device", args.device]
        if args.json_dir:
            sub += ["--json", str(args.json_dir / f"{name}.json")]
        print(f"\n=== {what}\n$ python -m {module} {' '.join(sub)}", flush=True)
        t0 = time.perf_counter()
        # One process per benchmark: memory and heap state left by one (GBs of freed activations) must not
        # tax the next, e.g. through copy-on-write faults after a DataLoader forks its workers.
        rc = subprocess.run([sys.executable, "-m", module, *sub], cwd=ROOT, env=env, check=False).returncode
        print(f"({name}: {time.perf_counter() - t0:.0f} s{'' if rc == 0 else f', FAILED with exit code {rc}'})",
              flush=True)
        failed += rc != 0
    print(f"\nall benchmarks: {time.perf_counter() - t_all:.0f} s" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
