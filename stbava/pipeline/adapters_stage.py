"""Stage three: fine-tune audio adapters inside the SAM image encoder (+ mask decoder) from raw frames.

Starts from a stage-two checkpoint. Embeddings now depend on the (trainable) adapters and the audio, so they
are computed live from frames; the loop is the same ``fit`` as stage two, with another embedder and another
set of trainable names. By default the ST-BAVA blocks stay frozen, as in the published code.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from stbava.checkpoint import CheckpointFormatError, file_digest, read_checkpoint
from stbava.config import Config, deep_update, config_from_dict
from stbava.data.clips import DataError, load_clips
from stbava.pipeline.distributed import resolve_device
from stbava.pipeline.net import LiveEmbedder, Net
from stbava.pipeline.sources import RawClips
from stbava.pipeline.train import fit, trainable_predicate

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "embedder.image_encoder.prompt_generator"


def stage_three_config(init: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """The stage-two config with adapters switched on and the stage-three recipe/overrides applied."""
    base = init["config"]
    data = deep_update(copy.deepcopy(base), {"model": {"adapters": True}, "train": {"epochs": 15, "train_fusion": False}})
    return config_from_dict(deep_update(data, overrides))


def check_encoder_matches(cfg: Config, init: dict[str, Any]) -> None:
    """The live encoder must be the one whose embeddings stage two was trained on."""
    from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest

    if init.get("fingerprint") is None:
        return  # imported official weights: no cache fingerprint recorded
    want = fingerprint_digest(init["fingerprint"])
    got = fingerprint_digest(encoder_fingerprint(cfg.encoder, cfg.frames))
    if want != got:
        raise CheckpointFormatError(
            f"{init['path']} was trained on embeddings of another encoder (fingerprint {want}, these settings give "
            f"{got}); pass the same --encoder/--sam-checkpoint/--vggish-checkpoint as at extraction"
        )


def build_adapter_net(cfg: Config, init: dict[str, Any]) -> Net:
    """Stage-two fusion weights + frozen encoders + fresh (or to-be-loaded) adapters."""
    from stbava.encoders.audio import build_vggish
    from stbava.encoders.image import build_image_encoder
    from stbava.model.adapters import AdaptedImageEncoder
    from stbava.pipeline.fusion import build_fusion_net
    from stbava.pipeline.restore import _load_exact

    fusion_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapters=False))
    net = build_fusion_net(fusion_cfg)
    _load_exact(net, init["weights"], init["path"], prefix="model.")
    enc = build_image_encoder(cfg.encoder.name, cfg.encoder.sam_checkpoint, cfg.encoder.seed)
    vgg = build_vggish(cfg.encoder.vggish_checkpoint, cfg.encoder.vggish_pca, cfg.encoder.seed)
    adapted = AdaptedImageEncoder(enc, hidden=cfg.model.adapter_hidden, zero_init=cfg.model.adapter_zero_init)
    return Net(net.model, LiveEmbedder(adapted, vgg, grad_checkpointing=cfg.train.grad_checkpointing))


def adapter_prefixes(cfg: Config) -> tuple[str, ...]:
    pre = (ADAPTER_PREFIX, "model.mask_decoder")
    return pre + (("model.audio_embed_layer", "model.layers") if cfg.train.train_fusion else ())


def finetune_adapters(init: str | Path, data_root: str | Path, run_dir: str | Path, overrides: dict[str, Any], *,
                      device: str = "auto", progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Stage three end to end: stage-two checkpoint + raw clips -> run dir with adapter checkpoints."""
    from stbava.encoders.image import image_size

    payload = read_checkpoint(init)
    if payload["kind"] != "fusion":
        raise CheckpointFormatError(f"{payload['path']}: --init must be a stage-two (fusion) checkpoint or run dir")
    cfg = stage_three_config(payload, overrides)
    check_encoder_matches(cfg, payload)
    train_clips = load_clips(data_root, cfg.subset, ["train"], frames=cfg.frames)
    val_clips = load_clips(data_root, cfg.subset, ["val"], frames=cfg.frames)
    if not train_clips:
        raise DataError(f"no train clips for subset {cfg.subset} under {data_root}")
    size = image_size(cfg.encoder.name)
    train_ds = RawClips(train_clips, cfg.frames, size)
    val_ds = RawClips(val_clips, cfg.frames, size) if val_clips else None
    net = build_adapter_net(cfg, payload)
    extra = {"init_checkpoint": str(payload["path"]), "init_digest": file_digest(payload["path"])}
    return fit(cfg, net, train_ds, val_ds, run_dir, kind="adapters", trainable=trainable_predicate(adapter_prefixes(cfg)),
               fingerprint=payload.get("fingerprint"), device=resolve_device(device), extra=extra, resume=resume,
               progress=progress)
