"""What an experiment run was made from, so that a finished run is reused only for exactly the same inputs.

A run's key holds its resolved config, stage three's *resolved* recipe, the cache's identity (the encoder
fingerprint and a digest of its clip index) and the subset's data identity (the metadata csv's digest). The
training key lives in the run's ``experiment.json``; each ``result_<split>.json`` holds it plus the split. A
folder whose key differs from the one asked for is never reused: the run is refused with the differences
named, or, with ``--rerun-changed``, the folder is emptied and the run trained again in place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stbava.config import Config, ConfigError
from stbava.data.clips import csv_name, resolve_subset_root
from stbava.digest import file_sha256

MAX_LISTED = 8  # differences named in a refusal


class RunChanged(ConfigError):
    """A run folder holds a run made from other inputs than the ones asked for now."""


def cache_identity(cache: str | Path) -> dict[str, Any]:
    """The cache's encoder fingerprint and a sha256 of its clip index (split -> clip ids and done flags)."""
    from stbava.cache import open_cache

    with open_cache(cache) as reader:
        index = {s: [[cid, reader.is_done(cid)] for cid in reader.clip_ids(s)] for s in reader.splits()}
        fingerprint = reader.fingerprint
    blob = json.dumps(index, sort_keys=True).encode()
    return {"fingerprint": fingerprint, "clip_index_sha256": hashlib.sha256(blob).hexdigest()}


def data_identity(data_root: str | Path, subset: str) -> dict[str, Any]:
    """The subset's metadata csv (its sha256): which clips exist and which split each is in."""
    path = resolve_subset_root(data_root, subset) / csv_name(subset)
    return {"subset": subset, "metadata_sha256": file_sha256(path)}


def train_key(cfg: Config, variant: str, seed: int, finetune: Mapping[str, Any] | None,
              finetune_cfg: Config | None, cache: dict[str, Any], data: dict[str, Any],
              sets: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the training of one variant x seed depends on (JSON-able).

    ``sets``: the experiment's ``--set`` overrides, recorded as given (only when there are some, so the key of
    a run made without them stays what it was); their effect is in the resolved configs too.
    """
    key = {"variant": variant, "seed": seed, "config": cfg.to_dict(), "finetune": finetune,
           "finetune_resolved": None if finetune_cfg is None else finetune_cfg.to_dict(),
           "cache": cache, "data": data}
    return {**key, "set": dict(sets)} if sets else key


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> asked`` for every dotted key that differs (absent ones shown as <absent>)."""
    a, b = _flat(have), _flat(want)
    absent = "<absent>"
    return [f"{k}: {a.get(k, absent)!r} -> {b.get(k, absent)!r}" for k in sorted(set(a) | set(b))
            if a.get(k, absent) != b.get(k, absent)]


def _changed_message(run_dir: Path, diffs: list[str]) -> str:
    listed = "; ".join(diffs[:MAX_LISTED]) + (f"; and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED
                                              else "")
    return (f"{run_dir} holds a run made from other inputs ({listed}); it is not reused. Pass --rerun-changed to "
            "delete it and train again, or use another --out")


def claim_run_dir(run_dir: Path, key: dict[str, Any], rerun_changed: bool) -> None:
    """Record what ``run_dir`` is for; a folder made from other inputs is refused or, if asked, emptied.

    Raises:
        RunChanged: the recorded key differs and ``rerun_changed`` is false.
    """
    path = run_dir / "experiment.json"
    have = json.loads(path.read_text()) if path.is_file() else None
    if have is not None and have != key:
        if not rerun_changed:
            raise RunChanged(_changed_message(run_dir, differences(have, key)))
        shutil.rmtree(run_dir)
        have = None
    if have is None:
        from stbava.atomic import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(key, indent=2) + "\n")
