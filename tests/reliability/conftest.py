"""Shared fixtures of the reliability suite: one tiny synthetic MS3 set, its feature cache, a trained run.

Everything is built once per session (a few seconds with the tiny random encoders) and copied into
``tmp_path`` by any test that changes it, so no test sees another test's damage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from relhelpers import BATCH, COUNTS, FRAMES, SUBSET, Dataset, cli, train_args

from stbava.config import EncoderConfig
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.extract.features import run_extraction


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Dataset:
    return Dataset(write_synthetic(tmp_path_factory.mktemp("avsbench"), SUBSET, COUNTS, seed=3, frames=FRAMES))


@pytest.fixture(scope="session")
def ref_cache(dataset, tmp_path_factory) -> Path:
    """An uninterrupted extraction of every clip, with the suite's settings (the reference for equality)."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_extraction(dataset.root, SUBSET, path, "zarr", EncoderConfig(), batch_size=BATCH, device="cpu",
                   frames=FRAMES, progress=False, num_workers=0)
    return path


@pytest.fixture(scope="session")
def trained_run(dataset, ref_cache, tmp_path_factory) -> Path:
    """A one-step stage-two run dir (best.pt, last.pt, metrics.jsonl) on the reference cache."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    r = cli(*train_args(ref_cache, dataset.root, run_dir, "--max-steps", "1"))
    assert r.exit_code == 0, r.output
    return run_dir
