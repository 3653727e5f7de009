"""Stage three (``stbava finetune-adapters``): audio adapters in the SAM image encoder (+ decoder), raw frames.

Starts from a stage-two checkpoint. Embeddings now depend on the (trainable) adapters and the audio, so they
are computed live from frames; the loop is the same ``fit`` as stage two, with another embedder and another
set of trainable names. By default the ST-BAVA blocks stay frozen, as in the published code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from stbava.checkpoint import CheckpointFormatError, checkpoint_config, read_checkpoint
from stbava.config import Config, ConfigError, config_from_dict, deep_update
from stbava.data.clips import load_train_val
from stbava.device import resolve_device
from stbava.digest import file_sha256
from stbava.encoders.weights import WeightSearch, locate_weights
from stbava.model.avs_model import FUSION_PARAM_PREFIXES
from stbava.pipeline.core.distributed import dist_info
from stbava.pipeline.core.net import ADAPTER_PREFIX, build_adapter_net
from stbava.pipeline.core.sources import LiveSource
from stbava.pipeline.train.loop import fit, trainable_predicate
from stbava.provenance import require_same_encoders

log = logging.getLogger(__name__)



# What stage three cannot change: the stage-two model it starts from is built with these.
FIXED = {"subset": (), "frames": (), "model": ("depth", "embed_dim", "num_heads", "mlp_dim", "spatial_mode",
                                               "temporal", "bidirectional", "fusion")}


def _fixed_clashes(init_cfg: Config, overrides: dict[str, Any]) -> list[str]:
    out = []
    for section, keys in FIXED.items():
        if section not in overrides:
            continue
        if not keys:  # a top-level field
            if overrides[section] != getattr(init_cfg, section):
                out.append(f"{section}: {overrides[section]!r} (--init has {getattr(init_cfg, section)!r})")
            continue
        given = overrides[section] if isinstance(overrides[section], dict) else {}
        out += [f"{section}.{k}: {given[k]!r} (--init has {getattr(getattr(init_cfg, section), k)!r})"
                for k in keys if k in given and given[k] != getattr(getattr(init_cfg, section), k)]
    return out


def stage_three_config(init: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """The stage-two checkpoint ``init``'s config with the stage-three recipe and ``overrides`` applied."""
    return resolve_stage_three(checkpoint_config(init), overrides, init["path"])


def resolve_stage_three(init_cfg: Config, overrides: dict[str, Any], where: str) -> Config:
    """The stage-two config ``init_cfg`` with the stage-three recipe and ``overrides`` applied.

    Raises:
        ConfigError: an override of what the stage-two model was built with (subset, frames, architecture),
            or an ``encoder`` section (the encoders are the ones stage two's cache was made with); names
            ``where`` (the stage-two checkpoint).
    """
    clashes = _fixed_clashes(init_cfg, overrides)
    if "encoder" in overrides:
        clashes.append("encoder: the encoders are the ones stage two was trained on (recorded in --init); pass "
                       "weight files with --sam-checkpoint / --vggish-checkpoint / --weights-dir instead")
    if clashes:
        raise ConfigError(f"{where}: stage three starts from this stage-two model and cannot change "
                          f"{'; '.join(clashes)}")
    recipe = {"train": {"epochs": 15, "train_fusion": False}}
    data = deep_update(deep_update(init_cfg.to_dict(), recipe), overrides)
    return config_from_dict(data)


def check_encoder_matches(cfg: Config, init: dict[str, Any]) -> None:
    """The live encoder must be the one whose embeddings stage two was trained on (files, architecture, numerics)."""
    from stbava.encoders.fingerprint import encoder_fingerprint

    require_same_encoders(
        init.get("fingerprint"), encoder_fingerprint(cfg.encoder, cfg.frames), subject=f"{init['path']} was trained on",
        other="these encoder settings", error=CheckpointFormatError,
        fix="pass the same --encoder/--sam-checkpoint/--vggish-checkpoint as at extraction")


def adapter_prefixes(cfg: Config) -> tuple[str, ...]:
    """Trainable in stage three: adapters + decoder, and the fusion module (any of them) with train_fusion."""
    pre = (ADAPTER_PREFIX, "model.mask_decoder")
    return pre + (tuple(f"model.{p}" for p in FUSION_PARAM_PREFIXES) if cfg.train.train_fusion else ())


def finetune_adapters(init: str | Path, data_root: str | Path, run_dir: str | Path, overrides: dict[str, Any], *,
                      device: str = "auto", progress: bool = True, resume: bool = True,
                      search: WeightSearch | None = None) -> dict[str, Any]:
    """Stage three end to end: stage-two checkpoint + raw clips -> run dir with adapter checkpoints.

    The frozen encoders are the ones stage two was trained on: their files are located and checked by the
    digests ``init`` records (:func:`stbava.encoders.weights.locate_weights`, ``search`` for other places).
    """
    from stbava.encoders.image import image_size

    payload = read_checkpoint(init)
    if payload["kind"] != "fusion":
        raise CheckpointFormatError(f"{payload['path']}: --init must be a stage-two (fusion) checkpoint or run dir")
    cfg = stage_three_config(payload, overrides)
    if cfg.subset == "avss":
        raise ConfigError("finetune-adapters reads binary masks from raw frames; for subset avss, train stage two "
                          "(train-fusion) only")
    enc = locate_weights(cfg.encoder, payload.get("fingerprint"), search, subject=f"checkpoint {payload['path']}")
    cfg = dataclasses.replace(cfg, encoder=enc)
    check_encoder_matches(cfg, payload)
    train_clips, val_clips = load_train_val(data_root, cfg.subset, cfg.frames)
    source = LiveSource(image_size(cfg.encoder.name), cfg.frames)
    train_ds = source.dataset(train_clips)
    val_ds = source.dataset(val_clips) if val_clips else None
    net = build_adapter_net(cfg, payload)
    extra = init_reference(payload["path"], run_dir)
    return fit(cfg, net, train_ds, val_ds, run_dir, kind="adapters",
               trainable=trainable_predicate(adapter_prefixes(cfg)), fingerprint=payload.get("fingerprint"),
               device=resolve_device(device, dist_info().local_rank), extra=extra, resume=resume,
               progress=progress)


def init_reference(init_path: str | Path, run_dir: str | Path) -> dict[str, str]:
    """How a stage-three checkpoint names its stage-two one: absolute path, path relative to the run dir, digest.

    The relative path keeps a moved pair of run folders working; the digest proves it is the same file.
    """
    init = Path(init_path).resolve()
    rel = os.path.relpath(init, Path(run_dir).resolve())
    return {"init_checkpoint": str(init), "init_relative": rel, "init_digest": file_sha256(init)}
