"""``Net`` = an embedder (where embeddings come from) + the ST-BAVA fusion model.

Stage two's embedder passes cached embeddings through; stage three's runs frozen VGGish and the SAM image
encoder with trainable audio adapters on raw frames. ``Net.forward`` has one signature for both, so one
training loop and one evaluation serve both stages.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class CachedEmbedder(nn.Module):
    """Stage two: the batch already holds ``[B,T,256,h,w]`` image and ``[B,T,128]`` audio embeddings."""

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image, audio


class LiveEmbedder(nn.Module):
    """Stage three: frames ``[B,T,3,S,S]`` (0..255) + log-mels ``[B,T,1,96,64]`` -> embeddings.

    VGGish stays frozen (run without grad); the image encoder carries the audio adapters, which need the
    frame's VGGish vector, so embeddings depend on audio and cannot be cached.
    """

    def __init__(self, image_encoder: nn.Module, vggish: nn.Module, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.vggish = vggish
        self.grad_checkpointing = grad_checkpointing

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = image.shape[:2]
        with torch.no_grad():
            emb = self.vggish(audio.flatten(0, 1).float()).float()  # [B*T,128]
        feats = self.image_encoder(image.flatten(0, 1), emb, checkpoint=self.grad_checkpointing and self.training)
        return feats.unflatten(0, (b, t)), emb.unflatten(0, (b, t))


class Net(nn.Module):
    """Embedder + fusion model. ``forward(image, audio) -> logits [B,T,mask,mask]``."""

    def __init__(self, model: nn.Module, embedder: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embedder = embedder

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        img, aud = self.embedder(image, audio)
        return self.model(img, aud)


@contextlib.contextmanager
def amp_context(device: torch.device, amp: str) -> Iterator[None]:
    """bf16 autocast on CUDA for ``auto``/``bf16``; nothing on CPU (bf16 is ~15x slower there, ENV-NOTES §2)."""
    if device.type == "cuda" and amp in ("auto", "bf16"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    elif device.type == "cpu" and amp == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield
