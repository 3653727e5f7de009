"""Self-describing, atomically written checkpoints.

A checkpoint holds only what was trained (plus the tiny positional-encoding buffer the decoder was trained
with), the resolved config, the fingerprint of the embeddings it was trained on and the loop state needed for
exact resume. It never holds the frozen encoders: those are rebuilt from the config (and its checkpoint paths).
Loading uses ``weights_only=True``. This module only reads and writes the envelope; rebuilding a model from
one is :mod:`stbava.pipeline.core.restore` (``stbava.load_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stbava.atomic import atomic_open
from stbava.config import Config, config_from_dict, legacy_sizing
from stbava.provenance import require_same_encoders
from stbava.state_dict import CheckpointError

FORMAT = "stbava-checkpoint"
# 2: a fusion module's sizing options are None unless set (config.FUSION_OPTIONS); version-1 files recorded
# ignored values for the published modules and are read as built (config.legacy_sizing).
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointFormatError(CheckpointError):
    """A checkpoint that cannot be used: truncated, foreign, or made for another config/cache."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temp file + rename, so a crash never leaves a half-written checkpoint."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def save_checkpoint(path: str | Path, *, kind: str, cfg: Config, weights: dict[str, torch.Tensor],
                    fingerprint: dict[str, Any] | None, state: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, trainable: Sequence[str] | None = None) -> None:
    """Write a checkpoint of ``kind`` ("fusion" for stage two, "adapters" for stage three).

    ``trainable``: the names in ``weights`` that the stage trained (the rest are buffers that travel with the
    model); recorded so that a parameter count needs no model (:func:`trained_names`).
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": cfg.to_dict(),
        "weights": {k: v.detach().cpu().clone() for k, v in weights.items()},
        "fingerprint": fingerprint,
        "state": state or {},
        "extra": extra or {},
        "trainable": None if trainable is None else sorted(trainable),
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint file's envelope; errors name the file and the fix."""
    path = Path(path)
    if path.is_dir():
        cand = path / "best.pt"
        if not cand.is_file():
            raise CheckpointFormatError(f"{path} is a folder without best.pt: pass a checkpoint file or a run dir")
        path = cand
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch.load raises many types: truncated zip, foreign pickle, ...)
        raise CheckpointFormatError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]}); the file is damaged or not a "
            "stbava checkpoint — use the run's other checkpoint (best/last) or retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointFormatError(
            f"{path}: not a stbava checkpoint; official ST-BAVA weights are converted with `stbava import-official`"
        )
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointFormatError(f"{path}: checkpoint version {payload.get('version')} (this stbava reads "
                                    f"{', '.join(map(str, READABLE_VERSIONS))}); use the stbava that wrote it")
    payload["path"] = str(path)
    return payload


def trained_names(payload: dict[str, Any]) -> list[str] | None:
    """The weights a checkpoint's stage trained, or None where the writer did not record them."""
    return payload.get("trainable")


def checkpoint_config(payload: dict[str, Any]) -> Config:
    """The resolved config a checkpoint was trained with (version-1 sizing read as built: ``legacy_sizing``)."""
    data = payload["config"]
    return config_from_dict(legacy_sizing(data) if payload.get("version") == 1 else data, saved=True)


def check_compatible(payload: dict[str, Any], cfg: Config, fingerprint: dict[str, Any] | None) -> None:
    """Refuse to resume/evaluate a checkpoint with another model config or against another encoder's cache."""
    saved = checkpoint_config(payload)
    if saved.model != cfg.model or saved.frames != cfg.frames:
        diffs = [f"model.{k}: {v} != {getattr(cfg.model, k)}" for k, v in vars(saved.model).items()
                 if getattr(cfg.model, k) != v]
        if saved.frames != cfg.frames:
            diffs.append(f"frames: {saved.frames} != {cfg.frames}")
        raise CheckpointFormatError(
            f"{payload['path']}: made with another model config ({'; '.join(diffs)}); use the matching --config, "
            "or start a new --out folder"
        )
    require_same_encoders(
        payload.get("fingerprint"), fingerprint, subject=f"checkpoint {payload['path']} was trained on",
        other="this cache's", error=CheckpointFormatError,
        fix="evaluate it against the cache it was trained on, or rebuild that cache with `stbava extract-features` "
            "using the checkpoint's encoder settings")
