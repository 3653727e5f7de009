"""The experiment's tables and plot: ``results.json`` (all numbers), ``results.md`` (thesis-style) and, for a
sweep, ``sweep.png`` (mIoU and F-score against the swept value, as the thesis's Fig. 6.3).

Convention: per variant, the mean and the *sample* standard deviation (``ddof=1``) over the seeds that
finished; with a single finished seed there is no spread and the table shows "—" (``null`` in JSON). Failed
and refused seeds are counted, listed with their error, and left out of the mean. Tables show mIoU in percent
with two decimals and F-score as a fraction with three, as the thesis does; ``results.json`` keeps full
precision.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_bytes, atomic_write_text
from stbava.pipeline.experiment.spec import Spec

METRICS = ("miou", "fscore", "shuffled_miou", "shuffled_fscore", "train_s")
DASH = "—"


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of ``values``; std is None below two values, both None for none."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def variant_summary(name: str, label: str, sweep_value: Any, runs: list[dict[str, Any]],
                    n_seeds: int) -> dict[str, Any]:
    """One row: per-metric mean/std/per-seed values over the finished runs, plus failures."""
    done = [r for r in runs if r["status"] == "done"]
    row: dict[str, Any] = {"name": name, "label": label, "sweep_value": sweep_value, "seeds_planned": n_seeds,
                           "seeds_done": len(done), "runs": runs,
                           "failed": [{"seed": r["seed"], "error": r["error"]} for r in runs if r["status"] == "failed"],
                           "refused": [{"seed": r["seed"], "error": r["error"]} for r in runs
                                       if r["status"] == "refused"],
                           "resumed": any(r["resumed"] for r in done)}
    for m in METRICS:
        vals = [r[m] for r in done if r.get(m) is not None]
        mean, std = mean_std(vals)
        row[m] = {"mean": mean, "std": std, "values": vals} if vals else None
    params = sorted({r["trainable_params"] for r in done})
    row["trainable_params"] = params[0] if len(params) == 1 else (params or None)
    return row


def summarize(spec: Spec, runs: list[dict[str, Any]], seeds: list[int], split: str) -> dict[str, Any]:
    """Everything ``results.json`` holds (the plot data is added by :func:`write_results`)."""
    rows = [variant_summary(v.name, v.label, v.sweep_value, [r for r in runs if r["variant"] == v.name],
                            len(seeds)) for v in spec.variants]
    return {"title": spec.title, "spec": str(spec.path), "split": split, "seeds": seeds, "full": spec.full,
            "sweep_key": spec.sweep_key, "std": "sample standard deviation (ddof=1) over finished seeds; "
            "null with one", "units": "miou and fscore are fractions in [0,1]; train_s in seconds",
            "variants": rows}


def pm(stat: dict[str, Any] | None, scale: float, digits: int) -> str:
    """``mean ± std`` (``mean ± —`` with one seed, ``—`` without any)."""
    if stat is None:
        return DASH
    mean = f"{stat['mean'] * scale:.{digits}f}"
    std = DASH if stat["std"] is None else f"{stat['std'] * scale:.{digits}f}"
    return f"{mean} ± {std}"


def per_seed(stat: dict[str, Any] | None, scale: float, digits: int) -> str:
    return DASH if stat is None else ", ".join(f"{v * scale:.{digits}f}" for v in stat["values"])


def _status(row: dict[str, Any]) -> str:
    text = f"{row['seeds_done']}/{row['seeds_planned']} done"
    for kind in ("refused", "failed"):
        for f in row.get(kind, []):
            msg = " ".join(str(f["error"]).split())[:160].replace("|", "/")
            text += f"; seed {f['seed']} {kind}: {msg}"
    return text


def _params(p: Any) -> str:
    if p is None:
        return DASH
    return f"{p:,}" if isinstance(p, int) else "–".join(f"{x:,}" for x in (p[0], p[-1]))


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _main_row(r: dict[str, Any]) -> str:
    time_s = pm(r["train_s"], 1.0, 1) + (" *" if r["resumed"] else "")
    return _table_row([r["label"], pm(r["miou"], 100, 2), pm(r["fscore"], 1, 3), per_seed(r["miou"], 100, 2),
                       per_seed(r["fscore"], 1, 3), _params(r["trainable_params"]), time_s, _status(r)])


def _shuffled_control(full: dict[str, Any]) -> list[str]:
    intro = (f"Shuffled-audio control: the `{full['name']}` checkpoints scored with each clip given another "
             "clip's audio. A model that uses the audio drops here.")
    rows = [_table_row([full["label"], audio, pm(full[f"{p}miou"], 100, 2), pm(full[f"{p}fscore"], 1, 3),
                        per_seed(full[f"{p}miou"], 100, 2)]) for audio, p in (("own", ""), ("shuffled", "shuffled_"))]
    return ["", intro, "", _table_row(["variant", "audio", "mIoU (%)", "F-score", "mIoU per seed"]),
            "|---|---|---|---|---|", *rows]


def markdown(summary: dict[str, Any]) -> str:
    """results.md: the main table, the shuffled-audio control of the full model, notes."""
    seeds = ", ".join(str(s) for s in summary["seeds"])
    intro = (f"Split `{summary['split']}`, seeds {seeds}. Mean ± sample std (ddof=1) over the finished seeds "
             f"({DASH} with one); mIoU in %, F-score in [0, 1], as in the thesis.")
    header = ["variant", "mIoU (%)", "F-score", "mIoU per seed", "F-score per seed", "trainable params",
              "train time (s)", "runs"]
    lines = [f"# {summary['title']}", "", intro, "", _table_row(header), "|---" * len(header) + "|"]
    lines += [_main_row(r) for r in summary["variants"]]
    full = next((r for r in summary["variants"] if r["name"] == summary["full"]), None)
    if full is not None:
        lines += _shuffled_control(full)
    if any(r["resumed"] for r in summary["variants"]):
        lines += ["", ("\\* some runs resumed after an interruption: their train time counts only the part after "
                       "the resume.")]
    if summary.get("plot"):
        lines += ["", f"![{summary['sweep_key']} sweep]({summary['plot']['file']})"]
    return "\n".join(lines) + "\n"


def sweep_plot(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """mIoU (%) and F-score against the swept value with sample-std error bars; returns the plotted data
    (the x/y read back from the drawn lines, so the record is what the PNG shows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in summary["variants"] if r["sweep_value"] is not None and r["miou"] is not None]
    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    out: dict[str, Any] = {"file": path.name}
    for i, (metric, scale, ylabel) in enumerate((("miou", 100.0, "mIoU (%)"), ("fscore", 1.0, "F-score"))):
        ax = fig.add_subplot(1, 2, i + 1)
        x = [r["sweep_value"] for r in rows]
        y = [r[metric]["mean"] * scale for r in rows]
        err = [(r[metric]["std"] or 0.0) * scale for r in rows]
        bars = ax.errorbar(x, y, yerr=err, marker="o", capsize=3)
        ax.set_xlabel(summary["sweep_key"])
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        line = bars.lines[0]
        out[metric] = {"x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()],
                       "yerr": err}
    fig.suptitle(f"{summary['title']} (error bars: sample std over seeds)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return out


def write_results(spec: Spec, runs: list[dict[str, Any]], seeds: list[int], split: str,
                  out: Path) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` (and ``sweep.png``) into ``out``; returns the JSON content."""
    summary = summarize(spec, runs, seeds, split)
    if spec.sweep_key is not None and any(r["miou"] for r in summary["variants"] if r["sweep_value"] is not None):
        summary["plot"] = sweep_plot(summary, out / "sweep.png")
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(summary))
    return summary
