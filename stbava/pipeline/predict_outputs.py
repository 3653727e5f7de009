"""What ``predict`` writes per input besides the overlay: mask PNGs and ``summary.json``.

Masks are AVSBench style (224x224, 8-bit gray, 255 = sounding object), named ``<stem>_<k>.png`` with the
1-based second ``k``. With ``--temporal-stride S`` the extra masks of the seconds that start ``o`` seconds
later (o = S, 2S, ...) go to ``masks/offset_<o>/``, named the same way. ``summary.json`` holds, per second,
the foreground fraction (share of pixels with probability > 0.5) and the mean probability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stbava.atomic import atomic_write_text
from stbava.viz import save_mask_png


class MaskRecorder:
    """Receives every predicted second (in any order), writes its PNG and keeps two numbers per second."""

    def __init__(self, out: Path, stem: str) -> None:
        self.out, self.stem = out, stem
        self.rows: list[dict[str, float]] = []

    def add(self, start: float, prob: np.ndarray) -> None:
        """Record the second that starts at ``start`` (seconds from the clip's start) with probabilities ``prob``."""
        k, offset = int(np.floor(start + 1e-6)), round(start - np.floor(start + 1e-6), 4)
        folder = self.out / "masks" / (f"offset_{offset:g}" if offset else "")
        save_mask_png((prob > 0.5).astype(np.uint8), folder / f"{self.stem}_{k + 1}.png")
        self.rows.append({"start": round(float(start), 4), "foreground_fraction": float((prob > 0.5).mean()),
                          "mean_probability": float(prob.mean())})

    def summary(self, **info: Any) -> dict[str, Any]:
        """The summary dict: ``info`` + ``per_second`` (whole seconds) + ``per_step`` (every mask, by start)."""
        rows = sorted(self.rows, key=lambda r: r["start"])
        whole = [r for r in rows if float(r["start"]).is_integer()]
        out = {**info, "seconds": len(whole), "masks": str(self.out / "masks"),
               "per_second": [{"second": int(r["start"]), **{k: v for k, v in r.items() if k != "start"}}
                              for r in whole]}
        if len(rows) > len(whole):
            out["per_step"] = rows
        return out

    def write_summary(self, **info: Any) -> dict[str, Any]:
        s = self.summary(**info)
        atomic_write_text(self.out / "summary.json", json.dumps(s, indent=1) + "\n")
        return s
