"""The training metric log: one console line per epoch and ``metrics.jsonl`` (one JSON object per line).

Only rank 0 writes. On resume, lines after the resumed step are dropped, so a killed-and-resumed run's log
equals an uninterrupted one's. With ``train.logger: tensorboard`` the same scalars also go to TensorBoard
event files in ``RUN_DIR/tensorboard`` (tag ``<kind>/<name>``, x = optimiser step; needs the optional extra
``stbava[tensorboard]``); on resume its events after the resumed step are purged the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.config import ConfigError

log = logging.getLogger("stbava.train")


class MetricLogger:
    """``write(kind="step"|"epoch", **scalars)``; epoch records also go to the console."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path = path
        self.enabled = enabled
        self.tb_dir = path.parent / "tensorboard" if tensorboard and enabled else None
        self.tb: Any = None
        if self.tb_dir is not None:
            try:
                import torch.utils.tensorboard  # noqa: F401 - fails early when tensorboard is missing
            except ImportError:
                raise ConfigError('train.logger: tensorboard needs TensorBoard: pip install "stbava[tensorboard]"'
                                  ) from None

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (0: start a fresh log)."""
        if self.tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            self.tb = SummaryWriter(str(self.tb_dir), purge_step=step + 1)  # drops events of steps > step
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
        if self.tb is not None:
            self._tensorboard(record)
        if record.get("kind") == "epoch":
            log.info("epoch %d: %s", record["epoch"] + 1,
                     ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))

    def _tensorboard(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{record.get('kind', 'step')}/{key}", value, global_step=record.get("step", 0))
        if record.get("kind") == "epoch":
            self.tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (metrics.jsonl needs nothing: every line is appended whole)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
