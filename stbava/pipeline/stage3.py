"""Stage three (``stbava finetune-adapters``): audio adapters in the SAM image encoder (+ decoder), raw frames.

Starts from a stage-two checkpoint. Embeddings now depend on the (trainable) adapters and the audio, so they
are computed live from frames; the loop is the same ``fit`` as stage two, with another embedder and another
set of trainable names. By default the ST-BAVA blocks stay frozen, as in the published code.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from stbava.checkpoint import CheckpointFormatError, read_checkpoint
from stbava.config import Config, config_from_dict, deep_update
from stbava.data.clips import load_train_val
from stbava.device import resolve_device
from stbava.digest import file_sha256
from stbava.model.avs_model import FUSION_PARAM_PREFIXES
from stbava.pipeline.distributed import dist_info
from stbava.pipeline.net import ADAPTER_PREFIX, build_adapter_net
from stbava.pipeline.sources import LiveSource
from stbava.pipeline.train import fit, trainable_predicate
from stbava.provenance import require_same_encoders

log = logging.getLogger(__name__)



def stage_three_config(init: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """The stage-two config with adapters switched on and the stage-three recipe/overrides applied."""
    base = init["config"]
    recipe = {"model": {"adapters": True}, "train": {"epochs": 15, "train_fusion": False}}
    data = deep_update(copy.deepcopy(base), recipe)
    return config_from_dict(deep_update(data, overrides))


def check_encoder_matches(cfg: Config, init: dict[str, Any]) -> None:
    """The live encoder must be the one whose embeddings stage two was trained on."""
    from stbava.encoders.fingerprint import encoder_fingerprint

    require_same_encoders(
        init.get("fingerprint"), encoder_fingerprint(cfg.encoder, cfg.frames),  # None: imported official weights
        subject=f"{init['path']} was trained on", other="these encoder settings", error=CheckpointFormatError,
        fix="pass the same --encoder/--sam-checkpoint/--vggish-checkpoint as at extraction")


def adapter_prefixes(cfg: Config) -> tuple[str, ...]:
    """Trainable in stage three: adapters + decoder, and the fusion module (any of them) with train_fusion."""
    pre = (ADAPTER_PREFIX, "model.mask_decoder")
    return pre + (tuple(f"model.{p}" for p in FUSION_PARAM_PREFIXES) if cfg.train.train_fusion else ())


def finetune_adapters(init: str | Path, data_root: str | Path, run_dir: str | Path, overrides: dict[str, Any], *,
                      device: str = "auto", progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Stage three end to end: stage-two checkpoint + raw clips -> run dir with adapter checkpoints."""
    from stbava.encoders.image import image_size

    payload = read_checkpoint(init)
    if payload["kind"] != "fusion":
        raise CheckpointFormatError(f"{payload['path']}: --init must be a stage-two (fusion) checkpoint or run dir")
    cfg = stage_three_config(payload, overrides)
    check_encoder_matches(cfg, payload)
    train_clips, val_clips = load_train_val(data_root, cfg.subset, cfg.frames)
    source = LiveSource(image_size(cfg.encoder.name), cfg.frames)
    train_ds = source.dataset(train_clips)
    val_ds = source.dataset(val_clips) if val_clips else None
    net = build_adapter_net(cfg, payload)
    extra = {"init_checkpoint": str(payload["path"]), "init_digest": file_sha256(payload["path"])}
    return fit(cfg, net, train_ds, val_ds, run_dir, kind="adapters",
               trainable=trainable_predicate(adapter_prefixes(cfg)), fingerprint=payload.get("fingerprint"),
               device=resolve_device(device, dist_info().local_rank), extra=extra, resume=resume,
               progress=progress)
