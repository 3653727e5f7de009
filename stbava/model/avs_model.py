"""ST-BAVA fusion + SAM's mask decoder: cached embeddings in, 224x224 mask logits out (REFERENCE §4-§5).

The model deals only in tensors: ``[B,T,256,h,w]`` SAM image embeddings and ``[B,T,128]`` VGGish vectors.
SAM's ``MaskDecoder`` is used as is. It expects one image and B prompt sets (it repeats the image embedding
per prompt set), so all B*T frames go through it in one call by passing a zero image embedding and the
dense prompt ``E + V``: the decoder's ``src = 0 + (E + V)`` equals the published ``E + V`` exactly, without
the published per-frame loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty
from stbava.model.bava import BAVABlock


class FusionOutput(NamedTuple):
    """Features before and after the ST-BAVA blocks (for the similarity figure).

    V0, V: ``[B,T,HW,C]`` visual tokens (SAM embedding; fused dense prompt).
    A0, A: ``[B,T,C]`` audio (L2-normalised projection; fused sparse token A_L + A0).
    """

    V0: torch.Tensor
    A0: torch.Tensor
    V: torch.Tensor
    A: torch.Tensor


class AVSModel(nn.Module):
    """Audio projection, a stack of ST-BAVA blocks, SAM's dense PE and mask decoder.

    Args:
        embed_dim: SAM prompt width C (256).
        grid: side of the image-embedding grid (64 for SAM ViTs, 16 for ``tiny``); inputs are checked.
        img_size: encoder input side; low-res masks are upsampled to it first, as published (1024 / 256).
        mask_size: side of the returned logits (224, the AVSBench mask size).
        depth: number of ST-BAVA blocks (0 allowed: A0 + A0 sparse, E + E dense, as the published code).
        heads, mlp_dim, attn_dropout, spatial_mode, temporal, bidirectional: see :class:`BAVABlock`.
        fusion: False = decoder-only baseline: no blocks, sparse = A0 twice, dense = 0.
        audio_dim: VGGish width (128).
    """

    def __init__(self, *, embed_dim: int = 256, grid: int = 64, img_size: int = 1024, mask_size: int = 224,
                 depth: int = 5, heads: int = 8, mlp_dim: int = 256, attn_dropout: float = 0.1,
                 spatial_mode: str = "reference", temporal: bool = True, bidirectional: bool = True,
                 fusion: bool = True, audio_dim: int = 128) -> None:
        super().__init__()
        sam = thirdparty.sam_modeling()
        self.embed_dim, self.grid, self.img_size, self.mask_size = embed_dim, grid, img_size, mask_size
        self.audio_dim = audio_dim
        self.fusion = fusion
        self.audio_embed_layer = nn.Linear(audio_dim, embed_dim)
        self.layers = nn.ModuleList(
            BAVABlock(embed_dim, heads, mlp_dim, attn_dropout, spatial_mode, temporal, bidirectional)
            for _ in range(depth if fusion else 0)
        )
        self.pe_layer = sam.prompt_encoder.PositionEmbeddingRandom(embed_dim // 2)
        self.mask_decoder = sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        )

    @torch.no_grad()
    def center_audio_projection(self, mean_audio: torch.Tensor) -> None:
        """Data-dependent init: fold "subtract the mean training audio" into the projection bias.

        Why: VGGish embeddings share a large common component (random VGGish: cosine ~0.94 between
        different classes; pretrained VGGish vectors are non-negative), and A0 is L2-normalised right after
        the projection, so with a plain random init every A0 points almost the same way and the sound-specific
        part is a small remainder (on the demo data: +0.13 test mIoU with centring, README "Results"). Subtracting
        ``W @ mean`` from the bias, i.e. projecting ``x - mean`` (the architecture and parameter set are
        unchanged), makes A0 encode how a sound differs from the average one.

        Args:
            mean_audio: ``[audio_dim]`` mean VGGish vector of the training clips.
        """
        w = self.audio_embed_layer.weight
        self.audio_embed_layer.bias -= w @ mean_audio.to(w)

    def _check(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape checks + cast to the model dtype (cached image embeddings are float16)."""
        b, t = image.shape[:2]
        want = (self.embed_dim, self.grid, self.grid)
        if image.ndim != 5 or tuple(image.shape[2:]) != want:
            raise ValueError(f"image embeddings must be [B,T,{want[0]},{want[1]},{want[2]}], got "
                             f"{tuple(image.shape)} (embeddings of another encoder than this model's?)")
        if tuple(audio.shape) != (b, t, self.audio_dim):
            raise ValueError(f"audio embeddings must be [B,T,{self.audio_dim}] = [{b},{t},{self.audio_dim}], "
                             f"got {tuple(audio.shape)}")
        dtype = self.audio_embed_layer.weight.dtype
        return image.to(dtype), audio.to(dtype)

    def dense_pe(self, dtype: torch.dtype) -> torch.Tensor:
        """SAM's random-Fourier PE of the grid, ``[1,C,g,g]``."""
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0).to(dtype)

    def _fuse(self, image: torch.Tensor, audio: torch.Tensor) -> FusionOutput:
        v0 = image.flatten(3).transpose(-1, -2)  # [B,T,HW,C]
        a0 = F.normalize(self.audio_embed_layer(audio), dim=-1).unsqueeze(2)  # [B,T,1,C], unit norm
        if not self.fusion:
            return FusionOutput(v0, a0.squeeze(2), v0, a0.squeeze(2))
        v_pe = self.dense_pe(image.dtype).flatten(2).transpose(1, 2).unsqueeze(0)  # [1,1,HW,C]
        v, a = v0, a0
        for layer in self.layers:
            v, a = layer(a, v, a0, v_pe)
        return FusionOutput(v0, a0.squeeze(2), v, (a + a0).squeeze(2))

    def fuse(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> FusionOutput:
        """Run only the fusion part (see :class:`FusionOutput`); inputs as in :meth:`forward`."""
        return self._fuse(*self._check(image_embeddings, audio_embeddings))

    def upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """``[N,3,4g,4g]`` -> bilinear to img_size, then to mask_size, per channel, summed: ``[N,S,S]``."""
        x = F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = F.interpolate(x, (self.mask_size, self.mask_size), mode="bilinear", align_corners=False)
        return x.sum(dim=1)

    def forward(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
        """Segment the sounding objects of every frame.

        Args:
            image_embeddings: ``[B,T,C,g,g]`` SAM embeddings (any float dtype; cast to the model's).
            audio_embeddings: ``[B,T,128]`` VGGish vectors of the T frames.

        Returns:
            ``[B,T,mask_size,mask_size]`` logits (sum of SAM's 3 multimask logits; sigmoid not applied).
        """
        image, audio = self._check(image_embeddings, audio_embeddings)
        b, t, c, h, w = image.shape
        fo = self._fuse(image, audio)
        # Published dense prompt = fused V (added to E inside the decoder); baseline dense prompt = 0.
        dense = image + fo.V.transpose(-1, -2).reshape(b, t, c, h, w) if self.fusion else image
        sparse = fo.A.reshape(b * t, 1, c).expand(b * t, 2, c)  # the fused audio as 2 identical tokens
        low_res, _ = self.mask_decoder(
            image_embeddings=image.new_zeros(1, c, h, w),
            image_pe=self.dense_pe(image.dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.reshape(b * t, c, h, w),
            multimask_output=True,
        )
        return self.upsample(low_res).reshape(b, t, self.mask_size, self.mask_size)
