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
from stbava.config import Config, ConfigError, EncoderConfig, config_from_dict, model_option
from stbava.data.clips import Clip, DataError, load_train_val
from stbava.device import resolve_device
from stbava.encoders.weights import WeightSearch, locate_weights
from stbava.model.avs_model import FUSION_PARAM_PREFIXES
from stbava.pipeline.core.distributed import dist_info
from stbava.pipeline.core.net import Net, build_fusion_net
from stbava.pipeline.core.sources import CachedSource
from stbava.pipeline.train.loop import fit, trainable_predicate
from stbava.pipeline.train.resident import ResidentClips

log = logging.getLogger(__name__)

# Trainable in stage two: every fusion module's parameters (wherever AVSModel keeps them) and the decoder.
FUSION_PREFIXES = (*(f"model.{p}" for p in FUSION_PARAM_PREFIXES), "model.mask_decoder",
                   "model.class_head")  # class_head: the AVSS mask classifier (stbava.model.semantic)


def cache_encoders(reader: CacheReader) -> EncoderConfig:
    """The encoder config the cache was extracted with (weights' recorded paths, seed, numerics).

    Caches written before encoder configs were recorded give the name and seed from the fingerprint.
    """
    recorded = reader.manifest.info.get("encoders")
    if recorded is not None:
        return config_from_dict({"encoder": recorded}, saved=True).encoder
    image = reader.fingerprint.get("image", {})
    if image.get("encoder") is None:
        raise DataError("cache fingerprint has no image encoder name; rebuild it with `stbava extract-features`")
    m = re.search(r"seed=(\d+)", str(image.get("weights", "")))
    return EncoderConfig(name=image["encoder"], seed=int(m.group(1)) if m else 0)


def config_for_cache(cfg: Config, reader: CacheReader) -> Config:
    """The run's config with the cache's encoders and frame count, so the model fits the stored embeddings.

    Raises:
        ConfigError: the config sets an encoder field (away from its default) that the cache contradicts:
            the embeddings were made by the cache's encoders, whatever the config says.
    """
    enc = cache_encoders(reader)
    default = EncoderConfig()
    clash = [f"encoder.{k}: config {v!r}, cache {getattr(enc, k)!r}" for k, v in vars(cfg.encoder).items()
             if v != getattr(default, k) and v != getattr(enc, k)]
    if clash:
        raise ConfigError(f"the config contradicts cache {reader.path} ({'; '.join(clash)}): stage two takes its "
                          "encoders from the cache; drop the encoder section or use the cache those settings made")
    frames = int(reader.fingerprint.get("frames", cfg.frames))
    return dataclasses.replace(cfg, frames=frames, encoder=enc)


def sam_decoder_init(cfg: Config, reader: CacheReader, search: WeightSearch) -> dict[str, torch.Tensor] | None:
    """Decoder + PE weights from the SAM checkpoint that made the cache's embeddings; None for random init.

    The decoder must start from the same SAM as the image encoder: the file is located and checked by the
    digest the cache recorded (a random-init cache gets a random decoder, and a given file is refused).
    """
    from stbava.encoders import hiera
    from stbava.encoders.checkpoints import load_state_file, sam_decoder_state

    enc = locate_weights(cfg.encoder, reader.fingerprint, search, subject=f"cache {reader.path}", only=("sam",))
    if enc.sam_checkpoint is None:
        return None
    if hiera.is_sam2(enc.name):  # SAM 2's own decoder, from the checkpoint that made the cache
        return hiera.sam2_decoder_state(hiera.sam2_state(enc.sam_checkpoint), f"SAM 2 checkpoint {enc.sam_checkpoint}")
    return sam_decoder_state(load_state_file(enc.sam_checkpoint, "sam"))


def initial_fusion_net(cfg: Config, reader: CacheReader, train_clips: list[Clip],
                       search: WeightSearch | None = None) -> Net:
    """The net stage two starts from: SAM's decoder when the cache used SAM weights, audio projection centred
    (ST-BAVA and ``none``; the published modules have no normalised projection and start as published)."""
    mean_audio = mean_train_audio(reader, train_clips) if model_option(cfg.model, "center_audio") else None
    return build_fusion_net(cfg, sam_decoder_init(cfg, reader, search or WeightSearch()), mean_audio)


def mean_train_audio(reader: CacheReader, clips: list[Clip]) -> torch.Tensor:
    """Mean VGGish vector over every frame of the train clips (read from the cache; a few KB per clip)."""
    total = torch.zeros(AUDIO_DIM, dtype=torch.float64)
    count = 0
    for clip in clips:
        a = torch.from_numpy(reader.audio_embeddings(clip.id)).double()[: clip.num_frames]  # not AVSS padding
        total += a.sum(0)
        count += a.shape[0]
    return (total / max(count, 1)).float()


def check_num_classes(cfg: Config, data_root: str | Path) -> None:
    """The model's class count must be the dataset's (``label2idx.json``), or labels and classes would not match."""
    from stbava.data.avss_labels import read_label2idx
    from stbava.data.clips import resolve_subset_root

    root = resolve_subset_root(data_root, "avss")
    n = len(read_label2idx(root))
    if n != cfg.num_classes:
        raise ConfigError(f"{root / 'label2idx.json'} lists {n} classes but num_classes is {cfg.num_classes}; "
                          f"set num_classes: {n} (--set num_classes={n})")


def train_fusion(cfg: Config, cache: str | Path, data_root: str | Path, run_dir: str | Path, *,
                 device: str = "auto", progress: bool = True, resume: bool = True,
                 search: WeightSearch | None = None) -> dict[str, Any]:
    """Stage two end to end: cache + masks -> run dir with best.pt / last.pt / metrics.jsonl.

    ``search``: where the cache's SAM checkpoint is looked for (decoder init) besides its recorded path.
    The checkpoints record the cache's encoder config and fingerprint, so later stages find the same files.
    """
    from stbava.cache import open_cache

    reader = open_cache(cache)
    fp = reader.fingerprint
    cfg = config_for_cache(cfg, reader)
    train_clips, val_clips = load_train_val(data_root, cfg.subset, cfg.frames, avss_parts=cfg.avss_labels)
    if cfg.subset == "avss":
        check_num_classes(cfg, data_root)
    source = CachedSource(cache, cfg.frames)
    train_ds: Dataset = source.dataset(train_clips)
    val_ds = source.dataset(val_clips) if val_clips else None
    net = initial_fusion_net(cfg, reader, train_clips, search)
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
