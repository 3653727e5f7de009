"""What ``predict`` writes per input besides the overlay: mask PNGs and ``summary.json``.

Masks are AVSBench style (224x224, 8-bit gray, 255 = sounding object), named ``<stem>_<k>.png`` with the
1-based second ``k``. With ``--temporal-stride S`` the extra masks of the seconds that start ``o`` seconds
later (o = S, 2S, ...) go to ``masks/offset_<o>/``, named the same way. ``summary.json`` holds, per second,
the foreground fraction (share of pixels with probability > 0.5) and the mean probability.

An input's outputs are written into a hidden staging folder inside its output folder (:func:`staged`) and
moved into place only when the input succeeded, ``summary.json`` last: an input that fails leaves nothing
behind (its error is raised, or listed in ``batch.json`` for a folder), and a failed re-run leaves the
previous run's outputs as they were. (A process killed mid-input leaves only its ``.partial-*`` folder.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stbava.atomic import atomic_write_text
from stbava.data.video import TIME_EPS
from stbava.viz import save_mask_png

STAGING_PREFIX = ".partial-"


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A new empty folder inside ``out`` to write one input's outputs into.

    When the block succeeds its files are moved to the same place under ``out`` (replacing files of the
    same name, ``summary.json`` last and the old one removed first, so a summary always describes finished
    files). When it fails the staging folder is removed, and ``out`` too if this call created it.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise
    _publish(stage, out)


def _publish(stage: Path, out: Path) -> None:
    """Move every file of ``stage`` to the same relative path under ``out`` (``summary.json`` last)."""
    (out / "summary.json").unlink(missing_ok=True)  # the old summary no longer describes what is there
    files = sorted((f for f in stage.rglob("*") if f.is_file()), key=lambda f: f == stage / "summary.json")
    for f in files:
        dest = out / f.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    shutil.rmtree(stage)


class MaskRecorder:
    """Receives every predicted second (in any order), writes its PNG and keeps two numbers per second.

    Files go to ``out`` (a staging folder); the summary names them where they will be, under ``final``.
    """

    def __init__(self, out: Path, stem: str, final: Path | None = None) -> None:
        self.out, self.stem, self.final = out, stem, final or out
        self.rows: list[dict[str, float]] = []

    def add(self, start: float, prob: np.ndarray) -> None:
        """Record the second that starts at ``start`` (seconds from the clip's start) with probabilities ``prob``."""
        k, offset = int(np.floor(start + TIME_EPS)), round(start - np.floor(start + TIME_EPS), 4)
        folder = self.out / "masks" / (f"offset_{offset:g}" if offset else "")
        save_mask_png((prob > 0.5).astype(np.uint8), folder / f"{self.stem}_{k + 1}.png")
        self.rows.append({"start": round(float(start), 4), "foreground_fraction": float((prob > 0.5).mean()),
                          "mean_probability": float(prob.mean())})

    def summary(self, **info: Any) -> dict[str, Any]:
        """The summary dict: ``info`` + ``per_second`` (whole seconds) + ``per_step`` (every mask, by start)."""
        rows = sorted(self.rows, key=lambda r: r["start"])
        whole = [r for r in rows if float(r["start"]).is_integer()]
        out = {**info, "seconds": len(whole), "masks": str(self.final / "masks"),
               "per_second": [{"second": int(r["start"]), **{k: v for k, v in r.items() if k != "start"}}
                              for r in whole]}
        if len(rows) > len(whole):
            out["per_step"] = rows
        return out

    def write_summary(self, **info: Any) -> dict[str, Any]:
        s = self.summary(**info)
        atomic_write_text(self.out / "summary.json", json.dumps(s, indent=1) + "\n")
        return s
