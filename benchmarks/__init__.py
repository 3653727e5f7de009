"""Benchmarks: `python -m benchmarks` (all; `make bench`) or `python -m benchmarks.bench_<name>` (one)."""
