"""Helpers of the predict and app tests: a tiny, freshly built stage-two checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from stbava.checkpoint import save_checkpoint
from stbava.config import load_config
from stbava.encoders.fingerprint import encoder_fingerprint
from stbava.pipeline.net import build_fusion_net


def tiny_checkpoint(path: Path, empty_masks: bool = False) -> Path:
    """A freshly built stage-two checkpoint (tiny encoders, one ST-BAVA block): untrained but deterministic.

    ``empty_masks``: the decoder's mask hypernetworks output zeros, so every logit is 0, every probability
    0.5 and every mask empty (0.5 is not > 0.5): the overlay must then equal the input picture.
    """
    cfg = load_config(None, {"frames": 5, "encoder": {"name": "tiny"}, "model": {"depth": 1}})
    weights = build_fusion_net(cfg).state_dict()
    if empty_masks:
        for k in weights:
            if "output_hypernetworks_mlps" in k and ".layers.2." in k:
                weights[k] = torch.zeros_like(weights[k])
    save_checkpoint(path, kind="fusion", cfg=cfg, weights=weights,
                    fingerprint=encoder_fingerprint(cfg.encoder, cfg.frames))
    return path
