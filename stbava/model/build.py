"""Config -> :class:`AVSModel`: the only place in ``stbava.model`` that reads a :class:`Config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stbava.config import Config
from stbava.model.avs_model import AVSModel

PE_MODEL_KEY = "pe_layer.positional_encoding_gaussian_matrix"


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """Flat :class:`AVSModel` constructor arguments for ``cfg`` (grid and input size from the encoder)."""
    from stbava.encoders.image import grid_size, image_size

    m = cfg.model
    return {
        "embed_dim": m.embed_dim, "grid": grid_size(cfg.encoder.name),
        "img_size": image_size(cfg.encoder.name),
        "mask_size": m.mask_size, "depth": m.depth, "heads": m.num_heads, "mlp_dim": m.mlp_dim,
        "attn_dropout": m.attn_dropout, "spatial_mode": m.spatial_mode, "temporal": m.temporal,
        "bidirectional": m.bidirectional, "fusion": m.fusion,
    }


def load_sam_decoder(model: AVSModel, sam_state: Mapping[str, torch.Tensor],
                     source: str = "SAM checkpoint") -> None:
    """Start the mask decoder and the PE from SAM's weights (both strictly: a decoder needs its own PE).

    Args:
        model: target model.
        sam_state: a full SAM state dict or :func:`stbava.encoders.checkpoints.sam_decoder_state` of one:
            ``mask_decoder.*`` and ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` are used,
            anything else (image/prompt encoder) is ignored.
        source: named in errors.

    Raises:
        CheckpointError: missing/unexpected decoder keys, a shape mismatch, or no PE matrix.
    """
    from stbava.encoders.checkpoints import PE_KEY, CheckpointError, load_strict, strip_prefix

    if PE_KEY not in sam_state:
        raise CheckpointError(f"{source} has no {PE_KEY}: the mask decoder must start with the PE it was "
                              "trained with; pass an official SAM checkpoint (sam_vit_*.pth)")
    load_strict(model.mask_decoder, strip_prefix(dict(sam_state), "mask_decoder."),
                f"mask_decoder.* of {source}")
    load_strict(model.pe_layer, {"positional_encoding_gaussian_matrix": sam_state[PE_KEY]},
                f"{PE_KEY} of {source}")


def build_model(cfg: Config, sam_state: Mapping[str, torch.Tensor] | None = None) -> AVSModel:
    """Build the fusion model for ``cfg``; with ``sam_state`` the decoder and PE start from SAM.

    Random parts use the global torch RNG (the caller seeds it; the training run records the seed).
    """
    model = AVSModel(**model_kwargs(cfg))
    if sam_state is not None:
        load_sam_decoder(model, sam_state)
    return model
