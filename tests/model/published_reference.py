"""Test-only re-implementation of the published ST-BAVA computation (REFERENCE §4.3, §5), for one clip.

Deliberately written the way the published code computes, not the way stbava does: batch and time are
flattened into one axis of T frames, the temporal MHA is sequence-first and fed ``repeat``-ed audio, the
HW pooling is an ``AdaptiveAvgPool1d``, the PE is computed from its formula here, and SAM's mask decoder runs
in a per-frame loop with each frame's image embedding and its fused dense prompt, followed by the
two-step bilinear upsampling per channel and the channel sum. Module and key names follow the published
``Decoder`` so its ``state_dict()`` has the published layout (REFERENCE §9.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty


class PubMLP(nn.Module):
    def __init__(self, c: int = 256) -> None:
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(c, c), nn.Linear(c, c), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class PubBlock(nn.Module):
    """``AVFusionBlock`` on flattened frames: audio ``[N,1,C]``, visual ``[N,HW,C]`` (N = B*T)."""

    def __init__(self, c: int = 256, heads: int = 8) -> None:
        super().__init__()
        self.embed_vis, self.embed_audio, self.embed_audio2, self.embed_av = (PubMLP(c) for _ in range(4))
        self.avt_attention = nn.MultiheadAttention(c, heads, dropout=0.1)  # (L, N, E)
        self.avs_attention = nn.MultiheadAttention(c, heads, dropout=0.1, batch_first=True)
        for name in ("norm1", "norm2", "norm3_1", "norm3_2", "norm4", "norm5_1", "norm5_2", "norm6"):
            setattr(self, name, nn.LayerNorm(c))

    @staticmethod
    def pool_hw(x: torch.Tensor) -> torch.Tensor:
        return nn.AdaptiveAvgPool1d(1)(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, audio, visual, audio_pe, visual_pe):
        n_hw = visual.shape[1]
        a = self.norm1(audio + self.embed_audio(audio))
        v = self.norm2(visual + self.embed_vis(visual))
        # temporal, audio update: sequence axis = frames, batch axis = pixels
        o = self.avt_attention(v + visual_pe, (a + audio_pe).repeat(1, n_hw, 1), a.repeat(1, n_hw, 1))[0]
        a = self.norm3_1(a + self.pool_hw(o))
        # spatial, audio update: batch = frames, every pixel queries the one audio key
        o = self.avs_attention(v + visual_pe, a + audio_pe, a)[0]
        a = self.norm3_2(a + self.pool_hw(o))
        a = self.norm4(a + self.embed_audio2(a))
        # temporal, visual update
        o = self.avt_attention((a + audio_pe).repeat(1, n_hw, 1), v + visual_pe, v)[0]
        fv = self.norm5_1(v + o)
        # spatial, visual update: one pooled vector per frame, added to every pixel
        o = self.avs_attention(a + audio_pe, fv + visual_pe, fv)[0]
        fv = self.norm5_2(fv + o.repeat(1, n_hw, 1))
        fv = self.norm6(fv + self.embed_av(fv))
        return fv, a


class PubPE(nn.Module):
    """Random-Fourier dense PE from its formula: concat[sin z, cos z], z = 2*pi*((2c - 1) @ G)."""

    def __init__(self, feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, feats))

    def forward(self, g: int) -> torch.Tensor:
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        coords = torch.stack([xs, ys], dim=-1) * 2 - 1
        z = 2 * math.pi * (coords @ self.positional_encoding_gaussian_matrix)
        return torch.cat([z.sin(), z.cos()], dim=-1).permute(2, 0, 1)[None]  # [1,C,g,g]


class PublishedDecoder(nn.Module):
    """The published ``Decoder`` minus its image encoder (whose keys a test adds to the state dict)."""

    def __init__(self, depth: int, grid: int, img_size: int) -> None:
        super().__init__()
        sam = thirdparty.sam_modeling()
        self.grid, self.img_size = grid, img_size
        self.prompt_encoder = sam.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                                input_image_size=(img_size, img_size), mask_in_chans=16)
        self.mask_decoder = sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
        self.pe_layer = PubPE(128)
        self.audio_embed_layer = nn.Linear(128, 256)
        self.layers = nn.ModuleList(PubBlock() for _ in range(depth))

    def postprocess(self, masks: torch.Tensor) -> torch.Tensor:
        s = self.img_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)[..., :s, :s]
        return F.interpolate(masks, (224, 224), mode="bilinear", align_corners=False)

    def forward_audio(self, image_embeddings: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``[N,256,g,g]`` + VGGish ``[N,1,128]`` (N = the frames of one clip) -> ``[N,1,1,224,224]`` (S4)."""
        n, c, h, w = image_embeddings.shape
        a0 = F.normalize(self.audio_embed_layer(audio), dim=-1)
        pe = self.pe_layer(self.grid)
        v = image_embeddings.flatten(2).transpose(1, 2)
        a = a0
        for layer in self.layers:
            v, a = layer(a, v, a0, pe.flatten(2).transpose(1, 2))
        a = a + a0
        dense = v.transpose(1, 2).reshape(n, c, h, w)
        sparse = a.repeat(1, 2, 1)
        out = []
        for i in range(n):
            low, _ = self.mask_decoder(image_embeddings=image_embeddings[i][None], image_pe=pe,
                                       sparse_prompt_embeddings=sparse[i][None],
                                       dense_prompt_embeddings=dense[i], multimask_output=True)
            out.append(self.postprocess(low).sum(dim=1)[None])
        return torch.stack(out, dim=0)


def random_like_published(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with the shapes of ``model.state_dict()`` and sensible scales (weights ~ 1/sqrt(fan_in),
    LayerNorm gains ~ 1, biases small, the PE matrix N(0,1))."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        r = torch.randn(v.shape, generator=g)
        if "gaussian_matrix" in k:
            out[k] = r
        elif v.ndim >= 2:
            out[k] = r / math.sqrt(v[0].numel())
        elif k.endswith("weight"):
            out[k] = 1 + 0.1 * r
        else:
            out[k] = 0.1 * r
    return out


def published_file_state(depth: int, grid: int, img_size: int, enc_dim: int, enc_depth: int,
                         hidden: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """A hand-made state dict in the full published key layout: decoder part (random) + ``image_encoder.*``
    (a few ViT keys and the adapters ``prompt_generator.lightweight_mlp_{i}.0.*`` / ``shared_mlp.*``)."""
    sd = random_like_published(PublishedDecoder(depth, grid, img_size), seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd["image_encoder.patch_embed.proj.weight"] = torch.randn(enc_dim, 3, 16, 16, generator=g)
    sd["image_encoder.pos_embed"] = torch.randn(1, grid, grid, enc_dim, generator=g)
    for i in range(enc_depth):
        pre = f"image_encoder.prompt_generator.lightweight_mlp_{i}.0."
        sd[pre + "weight"] = torch.randn(hidden, 128, generator=g)
        sd[pre + "bias"] = torch.randn(hidden, generator=g)
    sd["image_encoder.prompt_generator.shared_mlp.weight"] = torch.randn(enc_dim, hidden, generator=g)
    sd["image_encoder.prompt_generator.shared_mlp.bias"] = torch.randn(enc_dim, generator=g)
    return sd
