"""The training metric log: one console line per epoch and ``metrics.jsonl`` (one JSON object per line).

Only rank 0 writes. On resume, lines after the resumed step are dropped, so a killed-and-resumed run's log
equals an uninterrupted one's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text

log = logging.getLogger("stbava.train")


class MetricLogger:
    """``write(kind="step"|"epoch", **scalars)``; epoch records also go to the console."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (0: start a fresh log)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = []
        for ln in self.path.read_text().splitlines():
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except json.JSONDecodeError:
                continue  # blank, or the last line of a run killed while writing it
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:  # append-only: a torn last line is dropped by truncate_after
            f.write(json.dumps(record) + "\n")
        if record.get("kind") == "epoch":
            log.info("epoch %d: %s", record["epoch"] + 1,
                     ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
