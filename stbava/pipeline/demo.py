"""``make demo``: the whole pipeline on the embedded synthetic MS3-style data, on a CPU, in minutes.

synth ('temporal' rules) -> extract (tiny SAM encoder + random VGGish) -> train fusion (full, and without
temporal attention) -> evaluate on test (own audio, shuffled audio, no temporal) -> results table, overlays,
similarity figure. The shuffled-audio row is the honesty check: a model that ignores audio scores the same
with any clip's audio. The per-condition columns show where time matters: in drowned or paused seconds
only the clip's other seconds tell which object sounds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.config import Config, load_config

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_config(path: str | Path | None = None) -> Config:
    """configs/demo.yaml when present (a source checkout), otherwise the same settings from defaults."""
    p = Path(path) if path else DEMO_CONFIG
    if p.is_file():
        return load_config(p)
    return load_config(None, {"subset": "ms3", "model": {"depth": 2},
                              "train": {"epochs": 4, "batch_size": 2, "lr": 3e-4, "lr_schedule": "cosine",
                                        "warmup_steps": 40}})


GROUPS = ("clear", "drowned", "pause", "handover")  # frame groups of the hearing breakdown


def _row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    groups = report.get("frame_miou_by_hearing", {})
    return {"model": name, "miou": report["miou"], "fscore": report["fscore"], "clips": report["clips"],
            "frame_miou": {g: v["miou"] for g, v in groups.items()}}


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: mIoU / F per model, then the mean frame IoU of clear, drowned and paused seconds and of
    hand-over clips (``pipeline/hearing.py``)."""
    lines = ["| model (synthetic MS3 test split) | mIoU | F-score | " + " | ".join(f"{g} frames" for g in GROUPS)
             + " | clips |", "|---|---|---|" + "---|" * (len(GROUPS) + 1)]
    for r in rows:
        cells = [f"{r['frame_miou'][g]:.3f}" if g in r["frame_miou"] else "-" for g in GROUPS]
        lines.append(f"| {r['model']} | {r['miou']:.4f} | {r['fscore']:.4f} | {' | '.join(cells)} | {r['clips']} |")
    return "\n".join(lines)


def run_demo(out: str | Path, *, config: str | Path | None = None, clips: tuple[int, int, int] = (320, 16, 40),
             seed: int = 0, device: str = "auto", progress: bool = True, amp: str = "off") -> dict[str, Any]:
    """Run every stage into ``out``; returns the results (also written to out/results.{json,md}).

    ``amp``: ``off`` (default: float32 everywhere, the same numbers on every machine) or ``bf16``: extraction,
    both trainings and the evaluations under bf16 autocast (on CPU only where it is native, else refused:
    :func:`stbava.device.check_amp`). Use another ``out`` than a float32 demo's: its cache and runs differ.
    """
    from stbava.data.synthetic import write_synthetic
    from stbava.pipeline.evaluate.loop import run_eval
    from stbava.pipeline.extract.features import run_extraction
    from stbava.pipeline.train.stage2 import train_fusion

    out = Path(out)
    cfg = demo_config(config)
    if amp != "off":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    data_root = out / "data"
    if not (data_root / "Multi-sources" / "ms3_meta_data.csv").exists():
        write_synthetic(data_root, "ms3", {"train": clips[0], "val": clips[1], "test": clips[2]}, seed,
                        progress=progress)
    timings["synth_s"] = time.perf_counter() - t0
    cache = out / "cache" / "ms3.zarr"
    t = time.perf_counter()
    run_extraction(data_root, "ms3", cache, "zarr", cfg.encoder, batch_size=4, device=device, progress=progress,
                   amp=amp)
    timings["extract_s"] = time.perf_counter() - t

    runs = {"full": cfg, "no_temporal": dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, temporal=False))}
    for name, rcfg in runs.items():
        t = time.perf_counter()
        train_fusion(rcfg, cache, data_root, out / "runs" / name, device=device, progress=progress)
        timings[f"train_{name}_s"] = time.perf_counter() - t

    t = time.perf_counter()
    full_ckpt = out / "runs" / "full" / "best.pt"
    _, full = run_eval(full_ckpt, data_root, "test", out / "eval" / "full.json", cache=cache, device=device,
                       overlays=4, figures=3, progress=progress, amp=amp)
    _, shuffled = run_eval(full_ckpt, data_root, "test", out / "eval" / "full_shuffled_audio.json", cache=cache,
                           device=device, shuffle_audio=True, progress=progress, amp=amp)
    _, no_t = run_eval(out / "runs" / "no_temporal" / "best.pt", data_root, "test", out / "eval" / "no_temporal.json",
                       cache=cache, device=device, progress=progress, amp=amp)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    rows = [_row("ST-BAVA (full)", full), _row("same model, shuffled audio", shuffled),
            _row("trained without temporal attention", no_t)]
    results = {"rows": rows, "timings": timings, "config": cfg.to_dict(), "amp": amp,
               "figures": full.get("similarity_figures", []), "overlays": str(out / "eval" / "overlays")}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_table(rows) + "\n")
    return results
