"""Benchmark plumbing (no timing asserted): FLOP counts, config parsing, table, the entry point's options."""

from __future__ import annotations

import pytest

from benchmarks import __main__ as bench_main
from benchmarks.bench_scaling import parse_configs
from benchmarks.common import encoder_flops, step_flops, table


def test_encoder_flops_match_the_published_vit_h_figure():
    assert encoder_flops("vit_h") == pytest.approx(5.96e12, rel=0.01)  # the issue's ~5.96 TFLOP per frame
    assert encoder_flops("vit_b") < encoder_flops("vit_l") < encoder_flops("vit_h")


def test_step_flops_grow_linearly_with_frames_and_batch():
    one = step_flops("tiny", 1, 1)
    assert step_flops("tiny", 2, 1) == pytest.approx(2 * one, rel=0.02)
    assert step_flops("tiny", 1, 1, batch=3) == pytest.approx(3 * one, rel=0.02)
    assert step_flops("tiny", 1, 3) > step_flops("tiny", 1, 1)


def test_parse_configs_and_table():
    assert parse_configs("2x1x3,5X4x7") == [(2, 1, 3), (5, 4, 7)]
    text = table([{"name": "a", "v": 1.234}, {"name": "bbb", "v": None}], [("name", "name", ""), ("v", "v", ".1f")])
    lines = text.splitlines()
    assert lines[0].startswith("name") and lines[2].startswith("a  ") and lines[3].endswith("-")


def test_entry_point_rejects_unknown_benchmarks(capsys):
    with pytest.raises(SystemExit):
        bench_main.main(["--only", "nope"])
    assert "unknown benchmark" in capsys.readouterr().err
    assert set(bench_main.BENCHES) == {"step", "loader", "extract", "cache", "scaling", "roofline"}
