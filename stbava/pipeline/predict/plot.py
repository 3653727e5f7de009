"""Training curves from ``metrics.jsonl``: train loss, validation mIoU and F-score per epoch, runs overlaid.

Reads the epoch records the training loop writes (:mod:`stbava.pipeline.train.logger`): ``epoch`` (0-based, drawn
1-based), ``train_loss`` and, on validated epochs, ``val_miou`` / ``val_fscore``. Drawn with matplotlib's
object API on the Agg canvas (no pyplot), one colour per run across the three panels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stbava.data.clips import DataError

PANELS = (("train_loss", "train loss"), ("val_miou", "val mIoU"), ("val_fscore", "val F-score"))


def read_epochs(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``run_dir/metrics.jsonl`` in file order (torn or blank lines skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: pass a run dir written by train-fusion or finetune-adapters")
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "epoch":
            out.append(rec)
    if not out:
        raise DataError(f"{path}: no epoch records yet (the first epoch has not finished)")
    return out


def curves(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(1-based epochs, values) of ``key``, only where the record has it."""
    pts = [(r["epoch"] + 1, float(r[key])) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _labels(run_dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Any:
    """Draw every run into one PNG at ``out``; returns the matplotlib Figure (its lines hold the data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = [(label, read_epochs(d)) for label, d in zip(_labels(run_dirs), run_dirs)]
    fig = Figure(figsize=(12, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, title) in zip(axes, PANELS):
        for i, (label, recs) in enumerate(runs):
            x, y = curves(recs, key)
            ax.plot(x, y, marker="o", markersize=3, color=f"C{i}", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return fig
