"""Frozen SAM image encoder: SAM's own ``ImageEncoderViT`` plus exactly ``Sam.preprocess``.

The ViT is segment_anything's class (imported through :mod:`stbava.thirdparty`), never re-implemented,
so official ``image_encoder.*`` weights load 1:1. Besides SAM's three sizes there is a ``tiny``
config (256-pixel input, two narrow blocks) that is the default for the demo and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty
from stbava.config import ConfigError
from stbava.encoders import hiera
from stbava.encoders.checkpoints import describe_state, load_state_file
from stbava.state_dict import load_strict, strip_prefix

logger = logging.getLogger(__name__)

# SAM's pixel statistics on the 0..255 scale (ImageNet mean/std x 255), as in build_sam.py.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
NORM_EPS = 1e-6  # LayerNorm eps of every SAM encoder

_COMMON: dict[str, Any] = {"patch_size": 16, "mlp_ratio": 4.0, "out_chans": 256, "qkv_bias": True,
                           "use_rel_pos": True}

# ImageEncoderViT keyword arguments (JSON-able; norm_layer is added at build time). The vit_* entries
# repeat segment_anything/build_sam.py; `tiny` gives [N,256,16,16] in a few ms on a CPU.
IMAGE_ENCODERS: dict[str, dict[str, Any]] = {
    "vit_h": {**_COMMON, "img_size": 1024, "embed_dim": 1280, "depth": 32, "num_heads": 16,
              "window_size": 14, "global_attn_indexes": (7, 15, 23, 31)},
    "vit_l": {**_COMMON, "img_size": 1024, "embed_dim": 1024, "depth": 24, "num_heads": 16,
              "window_size": 14, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_b": {**_COMMON, "img_size": 1024, "embed_dim": 768, "depth": 12, "num_heads": 12,
              "window_size": 14, "global_attn_indexes": (2, 5, 8, 11)},
    "tiny": {**_COMMON, "img_size": 256, "embed_dim": 64, "depth": 2, "num_heads": 4,
             "window_size": 8, "global_attn_indexes": (1,)},
}


def _config(name: str) -> dict[str, Any]:
    if name not in IMAGE_ENCODERS:
        raise ConfigError(f"unknown image encoder {name!r}; choose one of "
                          f"{', '.join((*IMAGE_ENCODERS, *hiera.SAM2_CONFIGS))}")
    return IMAGE_ENCODERS[name]


def image_size(name: str) -> int:
    """Square input side the encoder expects (SAM: the longest side is resized to it; SAM 2: both sides)."""
    if hiera.is_sam2(name):
        return hiera.image_size(name)
    return int(_config(name)["img_size"])


def grid_size(name: str) -> int:
    """Side of the embedding grid: ``image_size // 16`` (64 for the SAM ViTs and SAM 2, 16 for tiny, sam2_mini)."""
    if hiera.is_sam2(name):
        return hiera.grid_size(name)
    cfg = _config(name)
    return int(cfg["img_size"]) // int(cfg["patch_size"])


def embedding_shape(name: str, high_res: bool = True) -> tuple[int, int, int]:
    """Per-frame shape of the cached image features: ``(256, g, g)``; SAM 2 with high-res levels
    ``(1024, g, g)`` (packed, :mod:`stbava.feature_levels`)."""
    if hiera.is_sam2(name):
        return hiera.embedding_shape(name, high_res)
    g = grid_size(name)
    return 256, g, g


def encoder_kwargs(name: str) -> dict[str, Any]:
    """Full ``ImageEncoderViT`` constructor kwargs for ``name`` (with SAM's LayerNorm eps 1e-6)."""
    kw = dict(_config(name))
    kw["global_attn_indexes"] = tuple(kw["global_attn_indexes"])
    kw["norm_layer"] = partial(nn.LayerNorm, eps=NORM_EPS)
    return kw


def new_sam_image_encoder(name: str, seed: int = 0) -> nn.Module:
    """SAM's ``ImageEncoderViT`` with SAM's default init drawn from ``seed`` (global RNG left untouched)."""
    cls = thirdparty.sam_modeling().ImageEncoderViT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**encoder_kwargs(name))


class FrozenImageEncoder(nn.Module):
    """Normalise + pad exactly like ``Sam.preprocess``, then run SAM's ViT.

    The mean/std buffers are non-persistent, so ``state_dict()`` is the encoder's (``encoder.*``) only.
    """

    def __init__(self, encoder: nn.Module, name: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.name = name
        self.img_size = int(encoder.img_size)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,3,h,w]`` 0..255 RGB (h, w <= img_size) -> normalised, zero-padded ``[N,3,S,S]``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames [N,3,h,w], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h > self.img_size or w > self.img_size:
            raise ValueError(
                f"frames of {h}x{w} exceed the {self.name} encoder input {self.img_size}; resize them with "
                "stbava.data.transforms.frames_to_sam_input first"
            )
        x = (x - self.pixel_mean) / self.pixel_std
        # Padding comes after normalisation, so padded pixels are 0 in normalised space (as in SAM).
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed frames.

        Args:
            x: float ``[N,3,h,w]`` RGB on the 0..255 scale, resized (longest side = img_size), unpadded.

        Returns:
            ``[N,256,g,g]`` image embeddings, g = img_size // 16.
        """
        x = x.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        return self.encoder(self.preprocess(x))


def detect_sam_encoder(encoder_sd: Mapping[str, Any]) -> tuple[str | None, str]:
    """Which IMAGE_ENCODERS entry an ``image_encoder.*`` state dict (prefix stripped) fits.

    Returns:
        ``(name or None, "embed dim D, depth L, gxg grid")`` read from ``pos_embed`` and the block keys.
    """
    pos = encoder_sd.get("pos_embed")
    if pos is None or getattr(pos, "ndim", 0) != 4:
        return None, "no pos_embed [1,g,g,D] found"
    grid, dim = int(pos.shape[1]), int(pos.shape[3])
    depth = len({k.split(".")[1] for k in encoder_sd if k.startswith("blocks.")})
    for name, cfg in IMAGE_ENCODERS.items():
        if (cfg["embed_dim"], cfg["depth"], cfg["img_size"] // cfg["patch_size"]) == (dim, depth, grid):
            return name, f"embed dim {dim}, depth {depth}, {grid}x{grid} grid"
    return None, f"embed dim {dim}, depth {depth}, {grid}x{grid} grid"


def _mismatch_hint(name: str, full_sd: Mapping[str, Any], enc_sd: Mapping[str, Any]) -> str:
    fits, dims = detect_sam_encoder(enc_sd)
    if fits is not None and fits != name:
        return f"The file looks like a {fits} checkpoint ({dims}): pass --encoder {fits}."
    if not enc_sd:
        return f"It has no image_encoder.* keys; it looks like {describe_state(full_sd)}."
    return f"It matches no known encoder ({dims}); expected an official SAM checkpoint for --encoder {name}."


def build_image_encoder(name: str = "tiny", checkpoint: str | Path | None = None,
                        seed: int = 0) -> FrozenImageEncoder:
    """Build the frozen image encoder (eval mode, ``requires_grad`` False).

    Args:
        name: ``vit_h`` | ``vit_l`` | ``vit_b`` | ``tiny``.
        checkpoint: official full SAM state dict; its ``image_encoder.*`` keys are loaded strictly.
            None -> random init from ``seed`` (SAM's own init), recorded as such in the fingerprint.
        seed: seed of the random init when ``checkpoint`` is None.

    Raises:
        CheckpointError: missing/unreadable file or keys/shapes that do not fit ``name``.
    """
    _config(name)
    if checkpoint is None:
        logger.info("no SAM checkpoint: %s image encoder random-initialised (seed=%d)", name, seed)
        encoder = new_sam_image_encoder(name, seed)
    else:
        full = load_state_file(checkpoint, "sam")
        enc_sd = strip_prefix(full, "image_encoder.")
        # Built on the meta device and filled by assignment: no wasted random init (8 s for vit_h).
        with torch.device("meta"):
            encoder = thirdparty.sam_modeling().ImageEncoderViT(**encoder_kwargs(name))
        load_strict(encoder, enc_sd, f"image_encoder.* of SAM checkpoint {checkpoint} (--encoder {name})",
                    hint=_mismatch_hint(name, full, enc_sd), assign=True)
        encoder = encoder.float()
    model = FrozenImageEncoder(encoder, name).eval()
    model.requires_grad_(False)
    return model


def model_geometry(name: str, high_res: bool = True) -> dict[str, Any]:
    """``{"grid": g, "img_size": S}`` of encoder ``name``: the plain values the fusion model is built from.

    A SAM 2 encoder adds ``decoder="sam2"``, ``high_res`` and its decoder's config flags
    (:func:`stbava.encoders.hiera.decoder_geometry`): the model then builds SAM 2's mask decoder.
    """
    if hiera.is_sam2(name):
        return hiera.decoder_geometry(name, high_res)
    return {"grid": grid_size(name), "img_size": image_size(name)}


def adapter_geometry(name: str) -> dict[str, int]:
    """``{"width": C, "blocks": n}`` of encoder ``name``: what its audio adapters' shapes depend on."""
    if hiera.is_sam2(name):
        raise ConfigError(hiera.NO_ADAPTERS)
    cfg = _config(name)
    return {"width": int(cfg["embed_dim"]), "blocks": int(cfg["depth"])}
