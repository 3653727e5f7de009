"""Whether this CPU runs bf16 natively: what the CPU reports, confirmed by a short matmul timing.

The answer differs between machines of the same project: on a CPU without AVX512-BF16 or AMX, bf16
autocast ran ~15x slower than float32; on an AMD EPYC with ``avx512_bf16`` a 2048^2 matmul at 2 threads ran
2.8x faster in bf16 (ENV-NOTES). So bf16 on CPU is decided per machine, never assumed: the CPU's flags say
whether it claims native bf16, and a timing of the same matmul in both dtypes (on this process's threads)
confirms it. Measured once per process (:func:`cpu_bf16`), recorded by every stage that ran bf16 on CPU.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# x86: avx512_bf16 (Zen 4+, Cooper Lake+), amx_bf16 (Sapphire Rapids+); Arm: bf16 (in "Features")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
MATMUL_N = 1024  # 2.1 GFLOP per matmul: ~15 ms in fp32 on 2 EPYC cores, long enough to time, short enough to pay
MIN_SPEEDUP = 1.0  # bf16 must at least keep up with fp32 on the timed matmul to count as native


@dataclass(frozen=True)
class Bf16Check:
    """This CPU's bf16 answer: ``native`` = it reports a bf16 flag and the timed bf16 matmul is not slower."""

    cpu: str  # model name from /proc/cpuinfo
    flags: tuple[str, ...]  # the BF16_FLAGS the CPU reports (empty: none)
    capability: str  # torch.backends.cpu.get_cpu_capability(): the vector ISA torch's kernels use
    speedup: float  # fp32 time / bf16 time of the same MATMUL_N^2 matmul (>1: bf16 faster)
    threads: int  # torch threads the timing ran on
    native: bool
    cpuinfo: bool = True  # /proc/cpuinfo was readable; without it (macOS, Windows) the timing alone decides

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    def describe(self) -> str:
        flags = ", ".join(self.flags) or f"none of {', '.join(BF16_FLAGS)}"
        return (f"{self.cpu} reports {flags}; a {MATMUL_N}x{MATMUL_N} bf16 matmul ran {self.speedup:.2f}x the "
                f"fp32 speed on {self.threads} threads")


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """``(model name, flag set)`` of the first CPU in ``path``; ``("unknown CPU", set())`` where unreadable."""
    name, flags = "unknown CPU", set()
    try:
        text = Path(path).read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def matmul_seconds(dtype: torch.dtype, n: int = MATMUL_N, reps: int = 3) -> float:
    """Best-of-``reps`` seconds of one ``[n,n] @ [n,n]`` matmul in ``dtype`` on the CPU (after a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_speedup(n: int = MATMUL_N) -> float:
    """fp32 seconds / bf16 seconds of the same matmul, on this process's torch threads."""
    return matmul_seconds(torch.float32, n) / matmul_seconds(torch.bfloat16, n)


def check_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> Bf16Check:
    """Read the CPU's report and time the matmul (uncached; :func:`cpu_bf16` is the cached one)."""
    name, flags = read_cpuinfo(cpuinfo)
    reported = tuple(f for f in BF16_FLAGS if f in flags)
    speedup = measure_speedup()
    return Bf16Check(cpu=name, flags=reported, capability=torch.backends.cpu.get_cpu_capability(),
                     speedup=speedup, threads=torch.get_num_threads(),
                     native=(bool(reported) or not flags) and speedup >= MIN_SPEEDUP, cpuinfo=bool(flags))


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> Bf16Check:
    """This process's CPU answer, measured on first use (~0.1 s on a bf16 CPU, ~1 s on one without)."""
    return check_cpu()


def refusal(check: Bf16Check, what: str, off: str) -> str:
    """The message of a bf16 request this CPU cannot serve fast: what it reported, what was measured, the fix."""
    slower = 1 / check.speedup if check.speedup > 0 else float("inf")
    why = ("it reports no native bf16" if check.cpuinfo and not check.flags else
           "torch's bf16 matmul is slower than float32 here")
    cost = f"bf16 would run about {slower:.1f}x slower than float32" if slower > 1 else "bf16 is not native"
    return (f"{what} refused on this CPU: {why} ({check.describe()}), so {cost}. Use {off} (float32, the CPU "
            "default), or a CPU with AVX512-BF16/AMX, or a GPU.")
