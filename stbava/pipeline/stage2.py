"""Stage two (``stbava train-fusion``): train audio projection + ST-BAVA + SAM's mask decoder on the cache.

Reads only the cache and the GT masks; never builds an encoder. The encoder settings (and so the embedding
grid) come from the cache's fingerprint, so a model can never be trained on embeddings of another shape.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from stbava.cache.manifest import AUDIO_DIM
from stbava.cache.reader import CacheReader
from stbava.config import Config
from stbava.data.clips import Clip, DataError, load_train_val
from stbava.device import resolve_device
from stbava.model.avs_model import FUSION_PARAM_PREFIXES
from stbava.pipeline.distributed import dist_info
from stbava.pipeline.net import Net, build_fusion_net
from stbava.pipeline.resident import ResidentClips
from stbava.pipeline.sources import CachedSource
from stbava.pipeline.train import fit, trainable_predicate

log = logging.getLogger(__name__)

# Trainable in stage two: every fusion module's parameters (wherever AVSModel keeps them) and the decoder.
FUSION_PREFIXES = (*(f"model.{p}" for p in FUSION_PARAM_PREFIXES), "model.mask_decoder")


def config_for_cache(cfg: Config, fingerprint: dict[str, Any]) -> Config:
    """Take the encoder settings from the cache so the model's grid matches the stored embeddings."""
    image = fingerprint.get("image", {})
    name = image.get("encoder")
    if name is None:
        raise DataError("cache fingerprint has no image encoder name; rebuild it with `stbava extract-features`")
    seed = cfg.encoder.seed
    m = re.search(r"seed=(\d+)", str(image.get("weights", "")))
    if m:
        seed = int(m.group(1))
    frames = int(fingerprint.get("frames", cfg.frames))
    return dataclasses.replace(cfg, frames=frames, encoder=dataclasses.replace(cfg.encoder, name=name, seed=seed))


def sam_decoder_init(path: str | None) -> dict[str, torch.Tensor] | None:
    """Decoder + PE weights from an official SAM checkpoint, or None for random init."""
    if not path:
        return None
    from stbava.encoders.checkpoints import load_state_file, sam_decoder_state

    return sam_decoder_state(load_state_file(path, "sam"))


def initial_fusion_net(cfg: Config, reader: CacheReader, train_clips: list[Clip]) -> Net:
    """The net stage two starts from: SAM decoder weights if configured, audio projection centred on the train audio
    (ST-BAVA and ``none``; the published modules have no normalised projection and start as published)."""
    mean_audio = mean_train_audio(reader, train_clips) if cfg.model.center_audio else None
    return build_fusion_net(cfg, sam_decoder_init(cfg.encoder.sam_checkpoint), mean_audio)


def mean_train_audio(reader: CacheReader, clips: list[Clip]) -> torch.Tensor:
    """Mean VGGish vector over every frame of the train clips (read from the cache; a few KB per clip)."""
    total = torch.zeros(AUDIO_DIM, dtype=torch.float64)
    count = 0
    for clip in clips:
        a = torch.from_numpy(reader.audio_embeddings(clip.id)).double()
        total += a.sum(0)
        count += a.shape[0]
    return (total / max(count, 1)).float()


def train_fusion(cfg: Config, cache: str | Path, data_root: str | Path, run_dir: str | Path, *,
                 device: str = "auto", progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Stage two end to end: cache + masks -> run dir with best.pt / last.pt / metrics.jsonl."""
    from stbava.cache import open_cache

    reader = open_cache(cache)
    fp = reader.fingerprint
    cfg = config_for_cache(cfg, fp)
    train_clips, val_clips = load_train_val(data_root, cfg.subset, cfg.frames)
    source = CachedSource(cache, cfg.frames)
    train_ds: Dataset = source.dataset(train_clips)
    val_ds = source.dataset(val_clips) if val_clips else None
    net = initial_fusion_net(cfg, reader, train_clips)
    dev = resolve_device(device, dist_info().local_rank)
    if cfg.train.gpu_resident:  # whole train split on the device once; validation still streams from the cache
        resident = ResidentClips(train_ds, dev, num_workers=cfg.train.num_workers)
        log.info("train.gpu_resident: %d clips (%.2f GiB) loaded onto %s", len(resident),
                 resident.nbytes / 2**30, dev)
        train_ds = resident
    log.info("stage two: %d train / %d val clips, cache %s, device %s", len(train_ds),  # type: ignore[arg-type]
             len(val_ds) if val_ds else 0, cache, dev)
    return fit(cfg, net, train_ds, val_ds, run_dir, kind="fusion", trainable=trainable_predicate(FUSION_PREFIXES),
               fingerprint=fp, device=dev, extra={"cache": str(cache)}, resume=resume, progress=progress)
