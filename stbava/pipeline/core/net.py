"""``Net`` = an embedder (where embeddings come from) + the fusion model, and the builders of each stage's net.

Stage two's embedder passes cached embeddings through; stage three's runs frozen VGGish and the SAM image
encoder with trainable audio adapters on raw frames (:mod:`stbava.pipeline.core.sources`). ``Net.forward`` takes a
batch's named inputs, so one training loop and one evaluation serve both stages. The builders live here, not
in the stage recipes, so that restoring a checkpoint (:mod:`.restore`) needs no training code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stbava.config import Config, model_option
from stbava.pipeline.core.sources import CachedEmbedder, LiveSource
from stbava.state_dict import load_strict

ADAPTER_PREFIX = "embedder.image_encoder.prompt_generator"  # stage three's audio adapters inside a Net


class Net(nn.Module):
    """Embedder + fusion model: ``forward(**batch.inputs()) -> logits [B,T,mask,mask]``."""

    def __init__(self, model: nn.Module, embedder: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embedder = embedder

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        valid = inputs.pop("frame_valid", None)
        image, audio = self.embedder(**inputs)
        if valid is not None:  # padded frames (AVSS): zero embeddings, whatever the cache or loader gave
            image = image * valid[:, :, None, None, None].to(image.dtype)
            audio = audio * valid[:, :, None].to(audio.dtype)
        return self.model(image, audio)


def _seeded_fusion_net(cfg: Config, sam_state: dict[str, torch.Tensor] | None,
                       mean_audio: torch.Tensor | None) -> Net:
    """The stage-two net drawn from the global RNG seeded with ``train.seed``; callers fork the RNG first."""
    from stbava.encoders.image import model_geometry
    from stbava.model.build import build_model

    torch.manual_seed(cfg.train.seed)  # model init is part of the recorded, reproducible run
    model = build_model(cfg, sam_state, **model_geometry(cfg.encoder.name, cfg.encoder.high_res_features))
    if model_option(cfg.model, "center_audio") and mean_audio is not None:
        model.center_audio_projection(mean_audio)  # ST-BAVA, none; the published modules start as published
    return Net(model, CachedEmbedder())


def build_fusion_net(cfg: Config, sam_state: dict[str, torch.Tensor] | None = None,
                     mean_audio: torch.Tensor | None = None) -> Net:
    """The stage-two net at its initial weights (a resumed run overwrites them from last.pt).

    The init is a function of ``train.seed`` alone; the caller's global torch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        return _seeded_fusion_net(cfg, sam_state, mean_audio)


def build_adapter_net(cfg: Config, init: dict[str, Any]) -> Net:
    """Stage-two fusion weights + frozen encoders + fresh (or to-be-loaded) adapters.

    The adapters are drawn right after the fusion model from the same ``train.seed`` stream (as they were
    when the builder still seeded the global RNG), inside a fork, so the caller's RNG is left as it was.
    """
    from stbava.encoders.build import build_frozen_encoders
    from stbava.encoders.image import adapter_geometry
    from stbava.model.adapters import AdaptedImageEncoder

    adapter_geometry(cfg.encoder.name)  # ConfigError naming why SAM 2 has no stage three
    with torch.random.fork_rng(devices=[]):
        net = _seeded_fusion_net(cfg, None, None)
        model_keys = [k for k in net.state_dict() if k.startswith("model.")]
        load_strict(net, init["weights"], init["path"], required=model_keys)
        enc, vgg = build_frozen_encoders(cfg.encoder)
        adapted = AdaptedImageEncoder(enc, hidden=cfg.model.adapter_hidden, zero_init=cfg.model.adapter_zero_init)
    return Net(net.model, LiveSource.embedder(adapted, vgg, grad_checkpointing=cfg.train.grad_checkpointing))
