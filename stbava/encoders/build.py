"""The one place that builds the frozen stage-one encoders, so they run with the same numerics everywhere.

Extraction, stage three (adapters on the live encoder) and ``predict`` all get their SAM image encoder and
VGGish from :func:`build_frozen_encoders`: same weights, same init seed, same attention kernel. A model trained
on cached embeddings then sees, at prediction time, embeddings computed exactly as the cached ones were.
"""

from __future__ import annotations

import torch
from torch import nn

from stbava.config import EncoderConfig
from stbava.encoders.audio import build_vggish
from stbava.encoders.fast_attention import enable_sdpa
from stbava.encoders.image import FrozenImageEncoder, build_image_encoder


def build_frozen_encoders(enc: EncoderConfig, device: torch.device | str = "cpu", *,
                          sdpa: bool = True) -> tuple[FrozenImageEncoder, nn.Module]:
    """The SAM image encoder and VGGish of ``enc``, frozen and in eval mode, on ``device``.

    Args:
        enc: encoder name, weight files (None = random init from ``enc.seed``) and VGGish PCA file.
        device: where both encoders live.
        sdpa: route SAM attention through fused SDPA with the exact rel-pos bias
            (:mod:`stbava.encoders.fast_attention`); 1.17x the plain loop on the 2-core CPU
            (benchmarks/RESULTS.md §3). Values equal SAM's own attention to float rounding.

    Returns:
        ``(image_encoder, vggish)``: ``image_encoder(frames [N,3,S,S] 0..255) -> [N,256,g,g]``;
        VGGish is used through :func:`stbava.encoders.audio.embed_audio` (applies PCA when loaded).

    Raises:
        CheckpointError: a weight file that is missing, unreadable or of another architecture.
    """
    image = build_image_encoder(enc.name, enc.sam_checkpoint, seed=enc.seed)
    if sdpa:
        enable_sdpa(image)
    vggish = build_vggish(enc.vggish_checkpoint, enc.vggish_pca, seed=enc.seed)
    return image.to(device), vggish.to(device)
