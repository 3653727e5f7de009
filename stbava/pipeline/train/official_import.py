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
from stbava.encoders.weights import WeightSearch
from stbava.model.official import convert_official_adapters, convert_official_state


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a published checkpoint (plain state dict, optionally wrapped in {'state_dict': ...})."""
    from stbava.checkpoint import CheckpointFormatError

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch.load raises many types: zip, pickle, EOF, ...)
        raise CheckpointFormatError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:160]}); expected the "
                                    "published ST-BAVA checkpoint (<session>_best.pth)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointFormatError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def import_official(path: str | Path, out: str | Path, cfg: Config, search: WeightSearch) -> list[str]:
    """Convert and write; returns the written checkpoint paths.

    The encoders' weight files (``search``: given or the official files by name) are recorded with their
    sha256 in both checkpoints' fingerprint, so ``predict``, ``eval`` and ``finetune-adapters`` of imported
    weights run exactly those encoders, never a random one.
    """
    from stbava.encoders.fingerprint import encoder_fingerprint
    from stbava.encoders.image import adapter_geometry, model_geometry
    from stbava.encoders.weights import official_encoder_files
    from stbava.pipeline.train.stage3 import init_reference

    sd = load_official_file(path)
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=depth),
                              encoder=official_encoder_files(cfg.encoder, search))
    fp = encoder_fingerprint(cfg.encoder, cfg.frames)
    fusion = convert_official_state(sd, cfg, **model_geometry(cfg.encoder.name))
    source = {"official_file": str(path), "official_digest": file_sha256(path)}
    save_checkpoint(out, kind="fusion", cfg=cfg, weights={f"model.{k}": v for k, v in fusion.items()},
                    fingerprint=fp, extra=source)
    written = [str(out)]
    adapters = convert_official_adapters(sd, cfg, **adapter_geometry(cfg.encoder.name))
    if adapters:
        a_out = Path(out).with_name(Path(out).stem + "_adapters.pt")
        weights = {f"embedder.image_encoder.{k}": v for k, v in adapters.items()}
        weights.update({f"model.{k}": v for k, v in fusion.items() if k.startswith("mask_decoder.")})
        save_checkpoint(a_out, kind="adapters", cfg=cfg, weights=weights, fingerprint=fp,
                        extra={**source, **init_reference(out, a_out.parent)})
        written.append(str(a_out))
    return written
