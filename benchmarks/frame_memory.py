"""Peak memory of one image-encoder forward, for the per-frame table in docs/workflow.md ("Memory of extraction").

Run it once per (encoder, frames) in a fresh process, since ru_maxrss only grows:
``python benchmarks/frame_memory.py vit_b 1`` then ``... vit_b 2``; per frame = the peak growth / frames.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from stbava.config import EncoderConfig
from stbava.encoders.build import build_frozen_encoders
from stbava.encoders.image import image_size


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main(name: str, n: int) -> None:
    img, _ = build_frozen_encoders(EncoderConfig(name=name))
    x = torch.rand(n, 3, image_size(name), image_size(name)) * 255
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = _rss_kib()  # now, not the peak: building a model can peak above what it then holds
    t, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        img(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # process CPU seconds too: on a shared machine the wall time depends on the load, CPU time much less
    print(f"{name} frames={n} baseline_MiB={base // 1024} rss_before_MiB={rss // 1024} peak_MiB={peak // 1024} "
          f"forward_s={time.perf_counter() - t:.1f} cpu_s={time.process_time() - cpu:.1f} "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
