"""The roofline's FLOP counts (benchmarks/bench_roofline.py) against counts made by hand from the layer shapes.

The hand count does not use FlopCounterMode: forward hooks record each layer's input shape and whether its
input and weight need gradients, and the FLOPs follow from the textbook rules (2 per multiply-add; backward
of ``y = x W^T`` is one matmul of the same size for dW, and one for dx where x needs a gradient).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.bench_roofline import count_flops
from benchmarks.common import TrainStep
from stbava.encoders.fast_attention import disable_sdpa, enable_sdpa
from stbava.encoders.image import build_image_encoder

G = 16  # the tiny encoder's grid


def _hooks(net: nn.Module) -> tuple[list[float], list]:
    """Forward hooks adding each layer's forward + backward FLOPs to the returned list."""
    flops: list[float] = []

    def grads(name: str, x: torch.Tensor, w: torch.Tensor) -> int:
        # the IoU head's output (SAM's mask-quality score) is not in the loss: autograd never reaches it
        if "iou_prediction_head" in name:
            return 0
        return int(x.requires_grad) + int(w.requires_grad)

    def linear(name):
        def hook(m, inp, out):
            x = inp[0]
            f = 2 * x.numel() // m.in_features * m.in_features * m.out_features
            flops.append(f * (1 + grads(name, x, m.weight)))
        return hook

    def conv_t(name):
        def hook(m, inp, out):
            x = inp[0]  # each input pixel meets every weight once: N * Cin*Cout*k*k * H*W multiply-adds
            f = 2 * x.shape[0] * m.weight.numel() * x.shape[2] * x.shape[3]
            flops.append(f * (1 + grads(name, x, m.weight)))
        return hook

    def attention(name):
        def hook(m, args, kwargs, out):
            q, k = (kwargs["q"], kwargs["k"]) if kwargs else args[:2]  # [B,Nq,C], [B,Nk,C] (SAM passes q=, k=)
            # q k^T and attn v, each B*Nq*Nk*internal_dim multiply-adds
            f = 2 * 2 * q.shape[0] * q.shape[1] * k.shape[1] * m.internal_dim
            flops.append(3 * f)  # projected q, k, v all carry gradients (trainable projections): 2 grads per matmul
        return hook

    def upscaled(m, inp, out):  # masks = hyper_in [N,4,32] @ upscaled [N,32,(4g)^2]; both carry gradients
        n, c, h, w = out.shape
        flops.append(3 * 2 * n * 4 * c * h * w)

    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(linear(name))
        elif isinstance(m, nn.ConvTranspose2d):
            m.register_forward_hook(conv_t(name))
        elif type(m).__name__ == "Attention" and hasattr(m, "internal_dim"):
            m.register_forward_hook(attention(name), with_kwargs=True)
        elif name.endswith("mask_decoder.output_upscaling"):
            m.register_forward_hook(upscaled)
    return flops, net


def test_step_flops_equal_the_hand_count():
    """Decoder-only step (fusion ``none``), tiny 16x16 grid, one frame: forward + backward + Adam."""
    step = TrainStep("tiny", frames=1, depth=0, batch=1, device=torch.device("cpu"), amp="off", fusion="none")
    flops, _ = _hooks(step.net)
    counted = count_flops(step)  # the hooks record the same step's layers
    pe = 2 * G * G * 2 * 128  # SAM's random-Fourier PE of the grid: coords [g,g,2] @ [2,128], no gradient
    hand = sum(flops) + pe
    assert counted == hand
    assert hand > 5e8  # the decoder's two-way transformer and upscaling at 64x64 outputs, not a trivial count


@pytest.mark.parametrize("sdpa", [False, True])
def test_encoder_flops_count_attention_on_either_kernel(sdpa):
    """The tiny ViT at 256 px: patch conv + Linears + attention, by hand; SDPA's CPU kernel counted too."""
    enc = build_image_encoder("tiny", seed=0)
    (enable_sdpa if sdpa else disable_sdpa)(enc)
    vit = enc.encoder
    g, d = G, vit.patch_embed.proj.out_channels
    patch = 2 * g * g * 3 * 16 * 16 * d
    linears = sum(2 * g * g * m.in_features * m.out_features for m in vit.blocks.modules() if isinstance(m, nn.Linear))
    neck = 2 * g * g * d * 256 + 2 * g * g * 256 * 256 * 9  # 1x1 conv, then 3x3 conv (no padding FLOPs counted)
    attn = 0
    for blk in vit.blocks:  # windowed blocks attend within (padded) windows, global ones over the whole grid
        w = blk.window_size or g
        tokens, n_win = w * w, math.ceil(g / w) ** 2
        hd = d // blk.attn.num_heads
        attn += n_win * blk.attn.num_heads * 2 * (2 * tokens * tokens * hd)  # q k^T and attn v
        attn += n_win * blk.attn.num_heads * 2 * 2 * tokens * w * hd  # decomposed rel-pos: q.R_h and q.R_w
    x = torch.rand(1, 3, 256, 256) * 255
    with torch.inference_mode():
        assert count_flops(lambda: enc(x)) == patch + linears + neck + attn
