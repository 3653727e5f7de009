"""Rebuild a ``Net`` from a checkpoint: stage two (fusion) or stage three (adapters on top of stage two)."""

from __future__ import annotations

from typing import Any

import torch

from stbava.checkpoint import CheckpointFormatError, checkpoint_config, file_digest, read_checkpoint
from stbava.config import Config
from stbava.pipeline.net import Net


def _load_exact(net: Net, weights: dict[str, torch.Tensor], source: str, prefix: str = "") -> None:
    """Load ``weights`` into ``net``; every key must exist with the same shape (no silent strict=False)."""
    own = net.state_dict()
    unexpected = [k for k in weights if k not in own]
    bad = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    if unexpected or bad:
        raise CheckpointFormatError(f"{source}: keys not in this model {unexpected[:4]}, shape mismatch {bad[:4]}")
    missing = [k for k in own if k.startswith(prefix) and k not in weights] if prefix else []
    if missing:
        raise CheckpointFormatError(f"{source}: missing weights {missing[:4]} (of {len(missing)})")
    net.load_state_dict(weights, strict=False)


def restore_net(payload: dict[str, Any], device: str | torch.device = "cpu") -> tuple[Net, Config]:
    """A ready-to-run ``Net`` (eval mode) and its config from a checkpoint payload."""
    from stbava.pipeline.fusion import build_fusion_net

    cfg = checkpoint_config(payload)
    if payload["kind"] == "fusion":
        net = build_fusion_net(cfg)
        _load_exact(net, payload["weights"], payload["path"], prefix="model.")
    elif payload["kind"] == "adapters":
        from stbava.pipeline.adapters_stage import build_adapter_net

        init_path = payload["extra"]["init_checkpoint"]
        init = read_checkpoint(init_path)
        want = payload["extra"]["init_digest"]
        if file_digest(init["path"]) != want:
            raise CheckpointFormatError(
                f"{payload['path']}: its stage-two checkpoint {init['path']} changed since fine-tuning "
                f"(digest mismatch); restore the original file or re-run `stbava finetune-adapters`"
            )
        net = build_adapter_net(cfg, init)
        _load_exact(net, payload["weights"], payload["path"])
    else:
        raise CheckpointFormatError(f"{payload['path']}: unknown checkpoint kind {payload['kind']!r}")
    net.to(device).eval().requires_grad_(False)  # inference: frozen; training code sets its own flags
    return net, cfg


def restore_model(payload: dict[str, Any], device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """``stbava.load_model``: the fusion model (embeddings in, logits out); adapters ride along if present."""
    net, cfg = restore_net(payload, device)
    model = net.model
    if payload["kind"] == "adapters":
        model.adapted_encoder = net.embedder  # type: ignore[attr-defined]
    return model, cfg
