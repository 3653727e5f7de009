"""Config -> :class:`AVSModel`: the only place in ``stbava.model`` that reads a :class:`Config`.

The model knows nothing about encoders: the caller passes the embedding grid and the encoder's input side as
plain ints (``stbava.encoders.image.grid_size`` / ``image_size`` of the cache's encoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stbava.config import Config, model_option
from stbava.model.avs_model import AVSModel
from stbava.state_dict import CheckpointError, load_strict, strip_prefix
from stbava.thirdparty import SAM_PE_KEY

PE_MODEL_KEY = "pe_layer.positional_encoding_gaussian_matrix"


# config.ModelConfig sizing option -> constructor keyword, per module (FUSION_OPTIONS says which it takes).
OPTION_KEYWORDS: dict[str, dict[str, str]] = {
    "stbava": {"depth": "depth", "num_heads": "heads", "mlp_dim": "mlp_dim", "attn_dropout": "attn_dropout"},
    "han": {"depth": "depth", "num_heads": "heads", "mlp_dim": "dim_feedforward", "attn_dropout": "dropout"},
    "cmran": {"depth": "encoder_layers", "num_heads": "heads", "mlp_dim": "dim_feedforward",
              "attn_dropout": "dropout"},
    "jca": {"depth": "depth"},
}


def fusion_options(cfg: Config) -> dict[str, Any]:
    """The fusion module's own constructor keywords for ``cfg`` (``model.fusion`` picks the module).

    Each sizing option the module takes (``config.FUSION_OPTIONS``) is passed under the module's own name,
    resolved (None = the module's published value): ST-BAVA's blocks, HAN's layers, CMRAN's encoder layers,
    JCA's recursions are ``model.depth``; heads, FFN width and dropout likewise. ST-BAVA also takes its
    ablation switches; JCA's time-axis weights take the clip length ``frames``. TPAVI and ``none`` take none.
    """
    m = cfg.model
    out = {kw: model_option(m, name) for name, kw in OPTION_KEYWORDS.get(m.fusion, {}).items()}
    if m.fusion == "stbava":
        out.update(spatial_mode=m.spatial_mode, temporal=m.temporal, bidirectional=m.bidirectional)
    if m.fusion == "jca":
        out["frames"] = cfg.frames
    return out


def model_kwargs(cfg: Config, *, grid: int, img_size: int, **decoder: Any) -> dict[str, Any]:
    """Flat :class:`AVSModel` constructor arguments for ``cfg`` on a ``grid`` x ``grid`` embedding.

    Args:
        cfg: the run's config (``model`` section, and ``frames`` for JCA).
        grid: side of the image-embedding grid (64 for SAM ViTs, 16 for ``tiny``).
        img_size: the encoder's input side (1024 / 256); low-res masks are upsampled to it first.
        decoder: SAM 2's ``decoder="sam2"``, ``high_res``, ``decoder_flags`` (see :class:`AVSModel`); none for SAM.
    """
    return {"fusion": cfg.model.fusion, "embed_dim": cfg.model.embed_dim, "grid": grid, "img_size": img_size,
            **decoder, **fusion_options(cfg)}


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
    if SAM_PE_KEY not in sam_state:
        raise CheckpointError(f"{source} has no {SAM_PE_KEY}: the mask decoder must start with the PE it was "
                              "trained with; pass an official SAM checkpoint (sam_vit_*.pth)")
    decoder = strip_prefix(dict(sam_state), "mask_decoder.")
    if model.decoder == "sam2" and not model.high_res:  # SAM 2's decoder without its high-res levels
        decoder = {k: v for k, v in decoder.items() if not k.startswith(("conv_s0.", "conv_s1."))}
    load_strict(model.mask_decoder, decoder, f"mask_decoder.* of {source}")
    load_strict(model.pe_layer, {"positional_encoding_gaussian_matrix": sam_state[SAM_PE_KEY]},
                f"{SAM_PE_KEY} of {source}")


def build_model(cfg: Config, sam_state: Mapping[str, torch.Tensor] | None = None, *, grid: int,
                img_size: int, **decoder: Any) -> AVSModel:
    """Build the model for ``cfg`` (fusion module ``cfg.model.fusion``); with ``sam_state`` the decoder and PE
    start from SAM.

    Random parts use the global torch RNG (the caller seeds it; the training run records the seed).
    """
    kwargs = model_kwargs(cfg, grid=grid, img_size=img_size, **decoder)
    if cfg.subset == "avss":  # per-pixel classes: the same fusion + decoder and a mask classifier
        from stbava.model.semantic import SemanticAVSModel

        model: AVSModel = SemanticAVSModel(num_classes=cfg.num_classes, **kwargs)
    else:
        model = AVSModel(**kwargs)
    if sam_state is not None:
        load_sam_decoder(model, sam_state)
    return model
