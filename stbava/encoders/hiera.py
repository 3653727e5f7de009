"""Frozen SAM 2 image encoder (Hiera + FPN neck): ``sam2``'s own model and configs, run as its image predictor.

The model is ``sam2.build_sam.build_sam2`` of the package's own config (``configs/sam2.1/*.yaml``,
``configs/sam2/*.yaml``); ``sam2_mini`` is ``sam2.1_hiera_t``'s config with hydra overrides (a 24-wide,
five-block Hiera on 256-pixel input) for tests and the demo, built by the same call. An official checkpoint is
``{"model": state_dict}``; it is loaded strictly into the whole model (nothing is downloaded).

Features are SAM 2's image mode (``SAM2ImagePredictor.set_image``, REFERENCE §12): ``forward_image`` (which
already runs the decoder's ``conv_s0`` / ``conv_s1`` on the two high-resolution levels), then
``_prepare_backbone_features``, then ``no_mem_embed`` added to the lowest-resolution level. They leave as one
packed tensor (:mod:`stbava.feature_levels`): the ``[256,g,g]`` embedding and, unless high-res features are
off, ``s0 [32,4g,4g]`` and ``s1 [64,2g,2g]``.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty
from stbava.config import SAM2_ENCODERS, ConfigError
from stbava.feature_levels import pack_levels, packed_channels
from stbava.state_dict import CheckpointError, load_strict

logger = logging.getLogger(__name__)

# SAM2Transforms: RGB in [0,1], Resize((S,S)) (square, bilinear, antialiased), ImageNet mean/std.
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
EMBED_DIM = 256  # SAM 2's prompt / decoder width (hidden_dim of every shipped config)

_MINI = ("++model.image_size=256", "++model.image_encoder.trunk.embed_dim=24",
         "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
         "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]",
         "++model.memory_attention.num_layers=1")
# name -> (config inside the sam2 package, hydra overrides)
SAM2_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"sam2.1_hiera_{s}": (f"configs/sam2.1/sam2.1_hiera_{s}.yaml", ()) for s in ("t", "s", "b+", "l")},
    **{f"sam2_hiera_{s}": (f"configs/sam2/sam2_hiera_{s}.yaml", ()) for s in ("t", "s", "b+", "l")},
    "sam2_mini": ("configs/sam2.1/sam2.1_hiera_t.yaml", _MINI),
}
assert tuple(SAM2_CONFIGS) == SAM2_ENCODERS
OFFICIAL_SAM2 = {"sam2.1_hiera_t": "sam2.1_hiera_tiny.pt", "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
                 "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
                 "sam2_hiera_t": "sam2_hiera_tiny.pt", "sam2_hiera_s": "sam2_hiera_small.pt",
                 "sam2_hiera_b+": "sam2_hiera_base_plus.pt", "sam2_hiera_l": "sam2_hiera_large.pt"}
# SAM2Base settings that shape the mask decoder (its parameters and outputs), read from the config.
DECODER_FLAGS = ("iou_prediction_use_sigmoid", "pred_obj_scores", "pred_obj_scores_mlp",
                 "use_multimask_token_for_obj_ptr")


# Why stage three is refused on Hiera (docs/sam2.md): the published audio adapters (REFERENCE §6) are one
# Linear(128 -> C) per block of a ViT whose blocks all share one width C and one token grid; Hiera's blocks
# change width (x2) and pool their tokens (/2 per side) between four stages, and mix windowed and global attention,
# so "placed as in SAM's ViT blocks" has no single meaning there.
NO_ADAPTERS = ("finetune-adapters (stage three) is not available for SAM 2 encoders: the published audio adapters "
               "are one Linear(128->C) per block of a constant-width ViT, and Hiera's blocks change width and "
               "resolution across its four stages (docs/sam2.md); use a SAM encoder (vit_h|vit_l|vit_b|tiny) for "
               "stage three, or stage two (train-fusion) on the SAM 2 cache")


def is_sam2(name: str) -> bool:
    return name in SAM2_CONFIGS


def _entry(name: str) -> tuple[str, tuple[str, ...]]:
    if name not in SAM2_CONFIGS:
        raise ConfigError(f"unknown SAM 2 encoder {name!r}; choose one of {', '.join(SAM2_CONFIGS)}")
    return SAM2_CONFIGS[name]


@cache
def model_settings(name: str) -> dict[str, Any]:
    """The ``model`` section of ``name``'s composed config (overrides applied) as plain values; no model built."""
    config, overrides = _entry(name)
    build = thirdparty.sam2_module("build_sam")
    cfg = build.compose(config_name=config, overrides=list(overrides))
    return dict(build.OmegaConf.to_container(cfg.model, resolve=True))


def image_size(name: str) -> int:
    """Square input side (1024; ``sam2_mini`` 256): frames are resized to it, aspect not kept (as SAM 2)."""
    return int(model_settings(name)["image_size"])


def grid_size(name: str) -> int:
    """Side of the embedding grid: ``image_size // 16`` (SAM 2's backbone stride)."""
    return image_size(name) // 16


def decoder_geometry(name: str, high_res: bool) -> dict[str, Any]:
    """The plain values the fusion model's SAM 2 decoder is built from (:class:`stbava.model.AVSModel`)."""
    s = model_settings(name)
    return {"grid": grid_size(name), "img_size": image_size(name), "decoder": "sam2",
            "high_res": bool(high_res and s["use_high_res_features_in_sam"]),
            "decoder_flags": {k: bool(s.get(k, False)) for k in DECODER_FLAGS}}


def embedding_shape(name: str, high_res: bool) -> tuple[int, int, int]:
    """Per-frame shape of the cached (packed) features: ``(256 or 1024, g, g)``."""
    g = grid_size(name)
    return packed_channels(EMBED_DIM, decoder_geometry(name, high_res)["high_res"]), g, g


def new_sam2_model(name: str, seed: int = 0) -> nn.Module:
    """``build_sam2`` of ``name`` with its default init drawn from ``seed`` (global RNG left untouched)."""
    config, overrides = _entry(name)
    build = thirdparty.sam2_module("build_sam")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build.build_sam2(config, ckpt_path=None, device="cpu", mode="eval",
                                hydra_overrides_extra=list(overrides))


def sam2_state(checkpoint: str | Path) -> dict[str, Any]:
    """The ``model`` state dict of an official SAM 2 checkpoint file ``{"model": state_dict}``."""
    from stbava.encoders.checkpoints import load_state_file, where_to_get

    full = load_state_file(checkpoint, "sam")
    sd = full.get("model")
    if not isinstance(sd, dict):
        keys = ", ".join(sorted(full)[:4])
        raise CheckpointError(f"SAM 2 checkpoint {checkpoint} is not {{'model': state_dict}} (keys: {keys}); "
                              f"{where_to_get('sam')}")
    return sd


def sam2_decoder_state(sd: dict[str, Any], source: str) -> dict[str, Any]:
    """SAM 2's mask decoder and PE in SAM's layout: ``{"mask_decoder.<...>": t, SAM_PE_KEY: G [2,128]}``.

    From ``sam_mask_decoder.*`` and ``sam_prompt_encoder.pe_layer.*`` of a SAM 2 state dict, so the fusion
    model's one loader (:func:`stbava.model.build.load_sam_decoder`) takes either family strictly.
    """
    from stbava.encoders.checkpoints import where_to_get

    pe = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    out = {"mask_decoder." + k.removeprefix("sam_mask_decoder."): v for k, v in sd.items()
           if k.startswith("sam_mask_decoder.")}
    if not out or pe not in sd:
        raise CheckpointError(f"{source} has no sam_mask_decoder.* / {pe} keys: {where_to_get('sam')}")
    out[thirdparty.SAM_PE_KEY] = sd[pe]
    return out


def build_sam2_model(name: str, checkpoint: str | Path | None = None, seed: int = 0) -> nn.Module:
    """The whole SAM2Base of ``name`` in eval mode: official weights loaded strictly, or random from ``seed``."""
    if checkpoint is None:
        logger.info("no SAM 2 checkpoint: %s random-initialised (seed=%d)", name, seed)
        return new_sam2_model(name, seed)
    sd = sam2_state(checkpoint)  # a file of the wrong format fails before the model is built
    model = new_sam2_model(name, seed)
    hint = (f"expected the official SAM 2 checkpoint of --encoder {name}"
            + (f" ({OFFICIAL_SAM2[name]})" if name in OFFICIAL_SAM2 else ""))
    load_strict(model, sd, f"SAM 2 checkpoint {checkpoint} (--encoder {name})", hint=hint)
    return model


class FrozenSAM2Encoder(nn.Module):
    """Frames (0..255, any size) -> SAM 2's image-mode features, packed ``[N,256(+768),g,g]``.

    Args:
        model: a SAM2Base (``build_sam2_model``); only its image encoder, ``conv_s0`` / ``conv_s1`` and
            ``no_mem_embed`` run here.
        name: encoder name (errors, repr).
        high_res: also return the two projected high-resolution levels.
    """

    def __init__(self, model: nn.Module, name: str, high_res: bool = True) -> None:
        super().__init__()
        self.model, self.name = model, name
        self.img_size = int(model.image_size)
        self.high_res = bool(high_res and model.use_high_res_features_in_sam)
        self.register_buffer("mean", torch.tensor(SAM2_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SAM2_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,3,h,w]`` 0..255 RGB -> ``[N,3,S,S]``: SAM2Transforms (to [0,1], square bilinear antialiased
        resize as torchvision's ``Resize`` on tensors, normalise)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames [N,3,h,w], got shape {tuple(x.shape)}")
        x = x / 255.0
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Preprocessed ``[N,3,S,S]`` -> (embedding ``[N,256,g,g]`` with no_mem_embed, [s0, s1])."""
        m = self.model
        _, feats, _, _ = m._prepare_backbone_features(m.forward_image(x))
        if m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + m.no_mem_embed
        n, g = x.shape[0], self.img_size // 16
        sizes = [g * 4, g * 2, g]
        maps = [f.permute(1, 2, 0).reshape(n, -1, s, s) for f, s in zip(feats, sizes)]
        return maps[-1], maps[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[N,3,h,w]`` RGB 0..255 -> packed features ``[N,256(+768),g,g]``."""
        x = x.to(device=self.mean.device, dtype=self.mean.dtype)
        embed, (s0, s1) = self.features(self.preprocess(x))
        return pack_levels(embed, s0, s1) if self.high_res else embed


def build_sam2_encoder(name: str, checkpoint: str | Path | None = None, seed: int = 0,
                       high_res: bool = True) -> FrozenSAM2Encoder:
    """The frozen SAM 2 image encoder (eval mode, ``requires_grad`` False)."""
    enc = FrozenSAM2Encoder(build_sam2_model(name, checkpoint, seed), name, high_res).eval()
    enc.requires_grad_(False)
    return enc
