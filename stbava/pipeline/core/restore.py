"""Rebuild a ``Net`` from a checkpoint: stage two (fusion) or stage three (adapters on top of stage two).

``stbava.load_model`` lives here, above both stage recipes, so that :mod:`stbava.checkpoint` (reading and
writing the file) stays a leaf that imports no pipeline code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from stbava.checkpoint import CheckpointFormatError, checkpoint_config, read_checkpoint
from stbava.config import Config
from stbava.digest import file_sha256
from stbava.encoders.weights import WeightSearch, locate_weights
from stbava.pipeline.core.net import ADAPTER_PREFIX, Net, build_adapter_net, build_fusion_net
from stbava.state_dict import load_strict


def _stage_two_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The stage-two checkpoint a stage-three one was fine-tuned from, checked unchanged by digest.

    Looked for at its absolute path, then relative to the stage-three checkpoint's folder (moved runs).
    """
    extra = payload["extra"]
    path = Path(extra["init_checkpoint"])
    if not path.is_file() and extra.get("init_relative"):
        path = Path(payload["path"]).parent / extra["init_relative"]
    if not path.is_file():
        raise CheckpointFormatError(
            f"{payload['path']}: its stage-two checkpoint is gone ({extra['init_checkpoint']}"
            f"{', nor ' + str(path) if path != Path(extra['init_checkpoint']) else ''}); put it back, or keep the "
            "two run folders side by side as they were")
    init = read_checkpoint(path)
    if file_sha256(init["path"]) != payload["extra"]["init_digest"]:
        raise CheckpointFormatError(
            f"{payload['path']}: its stage-two checkpoint {init['path']} changed since fine-tuning "
            f"(digest mismatch); restore the original file or re-run `stbava finetune-adapters`"
        )
    return init


def restore_net(payload: dict[str, Any], device: str | torch.device = "cpu",
                search: WeightSearch | None = None) -> tuple[Net, Config]:
    """A ready-to-run ``Net`` (eval mode, frozen) and its config from a checkpoint payload.

    A stage-three checkpoint's frozen encoders are rebuilt from the weight files its fingerprint records,
    located and verified by :func:`~stbava.encoders.weights.locate_weights` (``search``: other places).
    Building does not touch the caller's global torch RNG.
    """
    cfg = checkpoint_config(payload)
    if payload["kind"] == "fusion":
        net = build_fusion_net(cfg)
        required = [k for k in net.state_dict() if k.startswith("model.")]
    elif payload["kind"] == "adapters":  # stage-two weights in place; these overwrite what stage three trained
        enc = locate_weights(cfg.encoder, payload.get("fingerprint"), search,
                             subject=f"checkpoint {payload['path']}")
        cfg = dataclasses.replace(cfg, encoder=enc)
        net = build_adapter_net(cfg, _stage_two_of(payload))
        required = [k for k in net.state_dict() if k.startswith(ADAPTER_PREFIX)]
    else:
        raise CheckpointFormatError(f"{payload['path']}: unknown checkpoint kind {payload['kind']!r}")
    load_strict(net, payload["weights"], payload["path"], required=required)
    net.to(device).eval().requires_grad_(False)  # inference: frozen; training code sets its own flags
    return net, cfg


def load_model(path: str | Path, device: str | torch.device = "cpu",
               search: WeightSearch | None = None) -> tuple[torch.nn.Module, Config]:
    """Rebuild a trained model from a checkpoint file (or run dir): returns ``(model, config)``.

    The model takes embeddings and returns logits. A stage-three checkpoint also restores its adapters; the
    model then exposes ``model.adapted_encoder`` (the image encoder with audio adapters), which eval/predict
    run on raw frames.
    """
    payload = read_checkpoint(path)
    net, cfg = restore_net(payload, device, search)
    model = net.model
    if payload["kind"] == "adapters":
        model.adapted_encoder = net.embedder  # type: ignore[attr-defined]
    return model, cfg
