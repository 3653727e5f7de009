"""TPAVI: AVSBench's temporal pixel-wise audio-visual interaction (Zhou et al., ECCV 2022; REFERENCE §11).

:class:`TPAVI` is the published ``TPAVIModule(in_channels, mode='dot')`` (3-D, with batch norm): the same
sub-modules under the same names (``align_channel``, ``norm_layer``, ``g``, ``theta``, ``phi``, ``W_z``), so
a published state dict loads strictly, and the same call ``forward(x [B,C,T,H,W], audio [B,T,128]) ->
(z, audio_aligned)``. A non-local block: every position of the clip's T*H*W grid is updated by
``y = (theta(x)^T phi(a)) g(x) / N``, ``z = LayerNorm_C(W_z(y) + x)``, with the aligned audio repeated over
H*W as the "key" side.

Only the order of the products differs. The published dot mode forms the ``[N,N]`` matrix
``theta^T phi`` (N = T*H*W; 20480^2 floats = 1.6 GB per clip for SAM's 64x64 grid and T = 5) and divides it
by N. Dot mode has no softmax, so the product is associative and ``theta^T (phi g^T) / N`` is the same
number: here ``phi g^T`` is a ``[C',C']`` matrix and nothing grows faster than N. Because ``phi`` is a 1x1x1
convolution of audio that is constant over H*W, ``phi g^T`` is also computed per frame on the T audio vectors
and the per-frame sums of ``g`` instead of on the repeated ``[B,C,T,H,W]`` audio (tests: equal to the
literal order to 1e-5; measured memory in the test file).

:class:`TPAVIFusion` is the registered ``tpavi`` contract wrapper (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.fusion.registry import FusionPrompts, check_inputs, register_fusion, token_pair


class TPAVI(nn.Module):
    """The published TPAVI block in dot mode, computed in linear memory.

    Args:
        in_channels: C, the visual channels (256 for SAM embeddings, as ``TPAVIModule(in_channels=256)``).
        inter_channels: C' inside the block; None = C // 2 (at least 1), as published.
        audio_dim: audio width fed to ``align_channel`` (the published block hard-codes 128).
        bn_layer: ``W_z`` = conv + BatchNorm3d with zero-initialised BN affine (published default), else a
            zero-initialised conv. Either way the block starts as ``z = LayerNorm(x)``.
    """

    def __init__(self, in_channels: int = 256, inter_channels: int | None = None, audio_dim: int = 128,
                 bn_layer: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        self.align_channel = nn.Linear(audio_dim, in_channels)
        self.norm_layer = nn.LayerNorm(in_channels)
        self.g = nn.Conv3d(in_channels, self.inter_channels, kernel_size=1)
        if bn_layer:
            self.W_z = nn.Sequential(nn.Conv3d(self.inter_channels, in_channels, kernel_size=1),
                                     nn.BatchNorm3d(in_channels))
            zero: nn.Module = self.W_z[1]
        else:
            self.W_z = nn.Conv3d(self.inter_channels, in_channels, kernel_size=1)
            zero = self.W_z
        nn.init.zeros_(zero.weight)
        nn.init.zeros_(zero.bias)
        self.theta = nn.Conv3d(in_channels, self.inter_channels, kernel_size=1)
        self.phi = nn.Conv3d(in_channels, self.inter_channels, kernel_size=1)

    def interaction(self, x: torch.Tensor, audio_aligned: torch.Tensor) -> torch.Tensor:
        """``y = theta(x)^T (phi(a) g(x)^T) / N``, the non-local aggregation without the ``[N,N]`` matrix.

        Args:
            x: ``[B,C,T,H,W]`` visual map.
            audio_aligned: ``[B,T,C]`` ``align_channel`` output (the same for every pixel of a frame).

        Returns:
            ``[B,C',T,H,W]``.
        """
        b, _, t, h, w = x.shape
        n = t * h * w
        theta = self.theta(x).flatten(2)  # [B,C',N]
        g_sum = self.g(x).flatten(3).sum(-1)  # [B,C',T]: g summed over the H*W pixels of each frame
        phi = F.linear(audio_aligned, self.phi.weight.flatten(1), self.phi.bias)  # [B,T,C']
        # sum_n phi[:,n] g[:,n]^T, with phi constant over the pixels of a frame: sum_t phi_t (sum_hw g_t)^T
        phi_g = phi.transpose(1, 2) @ g_sum.transpose(1, 2)  # [B,C',C']
        y = (theta.transpose(1, 2) @ phi_g) / n  # [B,N,C']
        return y.transpose(1, 2).reshape(b, self.inter_channels, t, h, w)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The published call.

        Args:
            x: ``[B,C,T,H,W]`` visual features.
            audio: ``[B,T,audio_dim]`` audio features (raw VGGish in AVSBench).

        Returns:
            ``(z [B,C,T,H,W], audio_aligned [B,T,C])``: ``z = LayerNorm_C(W_z(y) + x)`` and the
            ``align_channel`` projection of the audio (what the published block returns as its second output).
        """
        audio_aligned = self.align_channel(audio)
        z = self.W_z(self.interaction(x, audio_aligned)) + x
        z = self.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return z, audio_aligned


@register_fusion("tpavi")
class TPAVIFusion(nn.Module):
    """Registered ``tpavi``: one TPAVI block on SAM's embedding grid, wired like ST-BAVA.

    - dense = E + z. The published block already carries its residual (``z = LN(W_z(y) + x)``), as ST-BAVA's
      V does (a post-norm residual stream starting from E), and the decoder then gets ``E + V``. Using the
      same ``E + output`` wiring for TPAVI makes the two modules drop-in replacements for each other; at init
      (zero BN affine) dense = E + LN(E), the counterpart of ST-BAVA's depth-0 ``E + E``.
    - sparse = the aligned audio twice. TPAVI updates only the visual side; the one audio representation it
      produces is ``align_channel(audio)``, which AVSBench itself uses as the block's audio output (its
      audio-visual matching loss). Not L2-normalised: the published block does not normalise it.
    - Batch norm and batch independence: in training mode BatchNorm3d takes statistics over the whole batch,
      which would mix clips. The block is therefore run one clip at a time in training, i.e. exactly the
      published computation with one clip per batch (statistics over that clip's T*H*W positions; running
      statistics are updated once per clip). In eval mode BN uses running statistics and the batch runs at
      once. As published, ``W_z.0.bias`` sits right before that BN, so in training it receives (numerically)
      no gradient.

    Args:
        embed_dim, audio_dim, grid: the fusion contract (``stbava.model.fusion``).
        inter_channels, bn_layer: see :class:`TPAVI`.
    """

    def __init__(self, *, embed_dim: int = 256, audio_dim: int = 128, grid: int = 64,
                 inter_channels: int | None = None, bn_layer: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.audio_dim, self.grid = embed_dim, audio_dim, grid
        self.tpavi = TPAVI(embed_dim, inter_channels, audio_dim, bn_layer)

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_pe: torch.Tensor | None = None) -> FusionPrompts:
        """``image [B,T,C,h,w]``, ``audio [B,T,audio_dim]`` -> dense ``[B,T,C,h,w]``, sparse ``[B,T,2,C]``.

        ``image_pe`` (SAM's dense PE) is not used: the published module has no positional encoding.
        """
        image, audio = check_inputs(image, audio, embed_dim=self.embed_dim, audio_dim=self.audio_dim,
                                    grid=self.grid, dtype=self.tpavi.align_channel.weight.dtype)
        x = image.transpose(1, 2)  # [B,C,T,h,w], the published layout
        if self.training:
            outs = [self.tpavi(x[i:i + 1], audio[i:i + 1]) for i in range(x.shape[0])]
            z, a = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        else:
            z, a = self.tpavi(x, audio)
        return FusionPrompts(dense=image + z.transpose(1, 2), sparse=token_pair(a))
