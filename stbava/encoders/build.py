"""The one place that builds the frozen stage-one encoders, so they run with the same numerics everywhere.

Extraction, stage three (adapters on the live encoder) and ``predict`` all get their SAM image encoder and
VGGish from :func:`build_frozen_encoders`: same weights, same init seed, same attention kernel. A model trained
on cached embeddings then sees, at prediction time, embeddings computed exactly as the cached ones were.
"""

from __future__ import annotations

import torch
from torch import nn

from stbava.config import EncoderConfig
from stbava.encoders import hiera
from stbava.encoders.audio import build_vggish
from stbava.encoders.fast_attention import enable_sdpa
from stbava.encoders.image import build_image_encoder


def build_frozen_encoders(enc: EncoderConfig, device: torch.device | str = "cpu"
                          ) -> tuple[nn.Module, nn.Module]:
    """The SAM image encoder and VGGish of ``enc``, frozen and in eval mode, on ``device``.

    Args:
        enc: encoder name, weight files (None = random init from ``enc.seed``), VGGish PCA file, and
            ``enc.sdpa``: route SAM attention through fused SDPA with the exact rel-pos bias
            (:mod:`stbava.encoders.fast_attention`); 1.17x the plain loop on the 2-core CPU
            (benchmarks/RESULTS.md §3). Values equal SAM's own attention to float rounding.
        device: where both encoders live.

    A SAM 2 name builds SAM 2's encoder (:mod:`stbava.encoders.hiera`; its attention is already SDPA, so
    ``enc.sdpa`` changes nothing there), returning packed features with ``enc.high_res_features``.

    Returns:
        ``(image_encoder, vggish)``: ``image_encoder(frames [N,3,S,S] 0..255) -> [N,256,g,g]``
        (SAM 2: ``[N,256 or 1024,g,g]`` from frames of any size);
        VGGish is used through :func:`stbava.encoders.audio.embed_audio` (applies PCA when loaded).

    Raises:
        CheckpointError: a weight file that is missing, unreadable or of another architecture.
    """
    image: nn.Module
    if hiera.is_sam2(enc.name):
        image = hiera.build_sam2_encoder(enc.name, enc.sam_checkpoint, enc.seed, enc.high_res_features)
    else:
        image = build_image_encoder(enc.name, enc.sam_checkpoint, seed=enc.seed)
        if enc.sdpa:
            enable_sdpa(image)
    vggish = build_vggish(enc.vggish_checkpoint, enc.vggish_pca, seed=enc.seed)
    return image.to(device), vggish.to(device)


# Peak extra memory of one frame through the image encoder in float32 with SDPA (activations, not weights), GiB.
# Measured on the 2-core CPU (peak RSS of one forward minus the RSS before it; docs/workflow.md, "Memory of extraction"): tiny 5.6 MiB
# per frame (1 vs 9 frames), vit_b 1.75 GiB (1 and 2 frames). vit_l / vit_h: an estimate, vit_b scaled by
# their 16 vs 12 attention heads (the global attention's [heads,4096,4096] scores dominate the peak).
PEAK_GIB_PER_FRAME = {"tiny": 0.0055, "vit_b": 1.75, "vit_l": 2.35, "vit_h": 2.35}
# SAM 2 by Hiera size (sam2.1_* and sam2_* alike): the growth of the peak RSS over one 1024-px frame's forward,
# float32, measured on the 2-core CPU (docs/sam2.md, "Measured": t 0.44, s 0.49, b+ 0.50, l 0.47 GiB),
# rounded up; SAM 2's attention is already SDPA. sam2_mini (256 px): an estimate, t scaled by the 16x fewer pixels.
PEAK_GIB_PER_FRAME_SAM2 = {"sam2_mini": 0.05, "t": 0.5, "s": 0.5, "b+": 0.6, "l": 0.6}
_MEMORY_SHARE = 0.5  # of the free memory, for one forward's activations: room for the loader and the writer


def _peak_gib(name: str) -> float:
    if hiera.is_sam2(name):
        return PEAK_GIB_PER_FRAME_SAM2[name if name == "sam2_mini" else name.rsplit("_", 1)[-1]]
    return PEAK_GIB_PER_FRAME[name]


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's ``mem_get_info``, or the host's available pages."""
    import os

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_frames_per_forward(name: str, device: torch.device, cap: int = 16) -> int:
    """Frames per image-encoder forward that fit in half the free memory of ``device`` (1..``cap``).

    Why: extraction used to push every frame of a batch of clips through one forward, so ``--batch-size 4`` of
    ``vit_b`` (20 frames at 1024) was killed for memory on a 24 GiB machine. Sizing the forward by frames makes
    the peak independent of how many clips a batch holds.
    """
    per_frame = _peak_gib(name) * 2**30
    return max(1, min(cap, int(_MEMORY_SHARE * free_memory_bytes(device) // per_frame)))
