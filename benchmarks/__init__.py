"""Benchmarks: `python -m benchmarks.bench_cache` (cache write/read throughput)."""
