"""Audio adapters inside SAM's image encoder (REFERENCE §6, SAMA-AVS style "prompt_generator").

Per encoder block i: ``lightweight_mlp_i`` = Linear(128->hidden) + GELU, then ONE ``shared_mlp``
Linear(hidden->embed_dim) shared by all blocks; the result is added to every token before block i.
We do not fork SAM: ``AdaptedImageEncoder`` holds SAM's ``ImageEncoderViT`` and replays its forward with its
own submodules (patch_embed, pos_embed, blocks, neck), inserting the prompts. Key names match the published
``image_encoder.prompt_generator.*`` so official adapter weights map 1:1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


class AudioPromptGenerator(nn.Module):
    """VGGish vector ``[N,128]`` -> one ``[N,embed_dim]`` prompt per encoder block."""

    def __init__(self, embed_dim: int, depth: int, audio_dim: int = 128, hidden: int = 512,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.depth = depth
        for i in range(depth):
            self.add_module(f"lightweight_mlp_{i}", nn.Sequential(nn.Linear(audio_dim, hidden), nn.GELU()))
        self.shared_mlp = nn.Linear(hidden, embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # published init: trunc-normal(0.02) weights, zero biases
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if zero_init:
            # Zero output layer: the encoder starts exactly as the stage-two (adapter-free) encoder.
            nn.init.zeros_(self.shared_mlp.weight)

    def forward(self, audio: torch.Tensor) -> list[torch.Tensor]:
        return [self.shared_mlp(getattr(self, f"lightweight_mlp_{i}")(audio)) for i in range(self.depth)]


class AdaptedImageEncoder(nn.Module):
    """Frozen SAM image encoder (with its SAM preprocessing) + trainable audio adapters.

    ``forward(frames [N,3,h,w] 0..255, audio [N,128]) -> [N,256,g,g]``. Only ``prompt_generator`` is trainable.
    """

    def __init__(self, frozen: nn.Module, hidden: int = 512, audio_dim: int = 128, zero_init: bool = True) -> None:
        super().__init__()
        self.frozen = frozen  # stbava.encoders.image.FrozenImageEncoder: .preprocess + .encoder (ImageEncoderViT)
        enc = frozen.encoder
        self.frozen.requires_grad_(False)
        self.prompt_generator = AudioPromptGenerator(int(enc.patch_embed.proj.out_channels), len(enc.blocks),
                                                     audio_dim, hidden, zero_init)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        enc = self.frozen.encoder
        x = self.frozen.preprocess(frames.to(self.frozen.pixel_mean.dtype))
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        prompts = self.prompt_generator(audio.to(x.dtype))
        for blk, prompt in zip(enc.blocks, prompts):
            x = x + prompt[:, None, None, :]
            # Activation checkpointing trades one recomputation per block for not storing its activations:
            # what lets ViT-H at 1024 fine-tune with a 5-frame clip on one GPU.
            x = activation_checkpoint(blk, x, use_reentrant=False) if checkpoint else blk(x)
        return enc.neck(x.permute(0, 3, 1, 2))
