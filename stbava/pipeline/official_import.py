"""``stbava import-official``: published ST-BAVA ``Decoder.state_dict()`` -> stbava checkpoint(s).

The fusion part (audio projection, ST-BAVA layers, mask decoder, PE) becomes a stage-two checkpoint; when the
file also carries the audio adapters (``image_encoder.prompt_generator.*``) a stage-three checkpoint is written
beside it (``<out stem>_adapters.pt``) that points at the stage-two one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from stbava.checkpoint import save_checkpoint
from stbava.config import Config
from stbava.digest import file_sha256


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a published checkpoint (plain state dict, optionally wrapped in {'state_dict': ...})."""
    from stbava.checkpoint import CheckpointFormatError

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointFormatError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:160]}); expected the "
                                    "published ST-BAVA checkpoint (<session>_best.pth)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointFormatError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def import_official(path: str | Path, out: str | Path, cfg: Config) -> list[str]:
    """Convert and write; returns the written checkpoint paths."""
    from stbava.encoders.image import adapter_geometry, model_geometry
    from stbava.model.official import convert_official_adapters, convert_official_state

    sd = load_official_file(path)
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=depth, adapters=False))
    fusion = convert_official_state(sd, cfg, **model_geometry(cfg.encoder.name))
    source = {"official_file": str(path), "official_digest": file_sha256(path)}
    save_checkpoint(out, kind="fusion", cfg=cfg, weights={f"model.{k}": v for k, v in fusion.items()},
                    fingerprint=None, extra=source)
    written = [str(out)]
    adapters = convert_official_adapters(sd, cfg, **adapter_geometry(cfg.encoder.name))
    if adapters:
        acfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapters=True))
        a_out = Path(out).with_name(Path(out).stem + "_adapters.pt")
        weights = {f"embedder.image_encoder.{k}": v for k, v in adapters.items()}
        weights.update({f"model.{k}": v for k, v in fusion.items() if k.startswith("mask_decoder.")})
        save_checkpoint(a_out, kind="adapters", cfg=acfg, weights=weights, fingerprint=None,
                        extra={**source, "init_checkpoint": str(out), "init_digest": file_sha256(out)})
        written.append(str(a_out))
    return written
