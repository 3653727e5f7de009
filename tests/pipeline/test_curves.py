"""``stbava plot`` draws exactly the numbers of metrics.jsonl; the TensorBoard logger writes the same scalars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stbava.cli import main
from stbava.config import ConfigError, load_config
from stbava.pipeline.predict.plot import plot_runs
from stbava.pipeline.train.logger import MetricLogger

# two hand-made runs; run b validates every second epoch only, and has a torn last line
RUN_A = [{"kind": "step", "epoch": 0, "step": 1, "loss": 0.9},
         {"kind": "epoch", "epoch": 0, "step": 2, "train_loss": 0.8, "val_miou": 0.10, "val_fscore": 0.20},
         {"kind": "epoch", "epoch": 1, "step": 4, "train_loss": 0.5, "val_miou": 0.30, "val_fscore": 0.35},
         {"kind": "epoch", "epoch": 2, "step": 6, "train_loss": 0.4, "val_miou": 0.25, "val_fscore": 0.40}]
RUN_B = [{"kind": "epoch", "epoch": 0, "step": 3, "train_loss": 1.2},
         {"kind": "epoch", "epoch": 1, "step": 6, "train_loss": 0.7, "val_miou": 0.05, "val_fscore": 0.15}]


def _run_dir(root: Path, name: str, records: list[dict], torn: str = "") -> Path:
    d = root / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)
    return d


def test_plot_two_runs_draws_their_numbers(tmp_path):
    a, b = _run_dir(tmp_path, "a", RUN_A), _run_dir(tmp_path, "b", RUN_B, torn='{"kind": "epoch", "ep')
    res = CliRunner().invoke(main, ["plot", str(a), str(b), "--out", str(tmp_path / "curves.png")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.size == (1200, 360)
        assert np.asarray(img.convert("L")).std() > 5
    fig = plot_runs([a, b], tmp_path / "again.png")
    want = {  # panel -> run -> (1-based epochs, values), written out by hand from the records above
        "train loss": {"a": ([1, 2, 3], [0.8, 0.5, 0.4]), "b": ([1, 2], [1.2, 0.7])},
        "val mIoU": {"a": ([1, 2, 3], [0.10, 0.30, 0.25]), "b": ([2], [0.05])},
        "val F-score": {"a": ([1, 2, 3], [0.20, 0.35, 0.40]), "b": ([2], [0.15])},
    }
    assert [ax.get_title() for ax in fig.axes] == list(want)
    for ax in fig.axes:
        got = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}
        assert got == want[ax.get_title()]


def test_plot_refuses_a_dir_without_metrics(tmp_path):
    res = CliRunner().invoke(main, ["plot", str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 1 and "metrics.jsonl not found" in res.output


def test_logger_choice_is_checked():
    assert load_config(None, {"train": {"logger": "tensorboard"}}).train.logger == "tensorboard"
    with pytest.raises(ConfigError, match="train.logger"):
        load_config(None, {"train": {"logger": "wandb"}})


def test_tensorboard_logger_writes_the_jsonl_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricLogger(tmp_path / "metrics.jsonl", enabled=True, tensorboard=True)
    log.truncate_after(0)
    for r in RUN_A:
        log.write(**r)
    log.close()
    # a resume from step 4 drops the later numbers in both logs
    log = MetricLogger(tmp_path / "metrics.jsonl", enabled=True, tensorboard=True)
    log.truncate_after(4)
    log.write(kind="epoch", epoch=2, step=6, train_loss=0.45, val_miou=0.28, val_fscore=0.41)
    log.close()
    jsonl = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in jsonl if r["kind"] == "epoch"] == [0.8, 0.5, 0.45]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"step/loss", "epoch/train_loss", "epoch/val_miou", "epoch/val_fscore"}
    got = [(e.step, round(e.value, 6)) for e in acc.Scalars("epoch/train_loss")]
    assert got == [(2, 0.8), (4, 0.5), (6, 0.45)]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("step/loss")] == [(1, 0.9)]
