"""Fused attention for SAM's image encoder without forking SAM's file.

SAM's ``Attention`` materialises ``softmax((q*scale) @ k^T + rel_pos_bias)`` by hand. On a GPU,
``torch.nn.functional.scaled_dot_product_attention`` runs the same computation in one fused kernel (the
memory-efficient backend accepts an arbitrary additive mask). The decomposed relative-position bias of SAM
(MViTv2's ``rel_h[q_h,k_h] + rel_w[q_w,k_w]``, computed from the *unscaled* query) is passed as that
additive ``attn_mask``, so the result is the same function up to float rounding; SDPA's default scale is
``head_dim**-0.5``, SAM's ``self.scale``.

:func:`enable_sdpa` swaps the ``forward`` of every SAM ``Attention`` instance inside a module (the class and
its weights stay SAM's, so checkpoints and fingerprints are unchanged); :func:`disable_sdpa` undoes it.
On a CPU it is not faster (most time is in the linear layers), so extraction enables it on CUDA only.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty

_FLAG = "_stbava_sdpa"


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                 hw: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position bias as a dense additive mask.

    Args:
        q: ``[N,L,hd]`` unscaled queries (N = batch x heads, L = h*w).
        rel_pos_h, rel_pos_w: the module's ``[2h-1,hd]`` / ``[2w-1,hd]`` tables.
        hw: ``(h, w)`` of the (window or global) token grid; queries and keys share it.

    Returns:
        ``[N,L,L]`` bias, identical to what ``add_decomposed_rel_pos`` adds to SAM's attention logits.
    """
    image_encoder = thirdparty.sam_modeling().image_encoder
    h, w = hw
    rh = image_encoder.get_rel_pos(h, h, rel_pos_h)  # [h,h,hd]
    rw = image_encoder.get_rel_pos(w, w, rel_pos_w)  # [w,w,hd]
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)  # [N,h,w,k_h]
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)  # [N,h,w,k_w]
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], h * w, h * w)


def sdpa_attention_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Drop-in ``forward`` for SAM's ``Attention``: ``[B,H,W,C] -> [B,H,W,C]`` via fused SDPA."""
    b, h, w, _ = x.shape
    heads = self.num_heads
    qkv = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [3,B,heads,L,hd]
    q, k, v = qkv.unbind(0)
    mask = None
    if self.use_rel_pos:
        bias = rel_pos_bias(q.reshape(b * heads, h * w, -1), self.rel_pos_h, self.rel_pos_w, (h, w))
        mask = bias.view(b, heads, h * w, h * w).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # [B,heads,L,hd]
    out = out.transpose(1, 2).reshape(b, h, w, -1)
    return self.proj(out)


def _attention_modules(module: nn.Module) -> list[nn.Module]:
    cls = thirdparty.sam_modeling().image_encoder.Attention
    return [m for m in module.modules() if isinstance(m, cls)]


def enable_sdpa(module: nn.Module) -> int:
    """Route every SAM ``Attention`` inside ``module`` through SDPA (idempotent).

    Args:
        module: a FrozenImageEncoder, an ``ImageEncoderViT``, or anything containing SAM attention blocks.

    Returns:
        Number of attention modules now using SDPA.
    """
    mods = _attention_modules(module)
    for m in mods:
        if not getattr(m, _FLAG, False):
            m.forward = types.MethodType(sdpa_attention_forward, m)
            setattr(m, _FLAG, True)
    return len(mods)


def disable_sdpa(module: nn.Module) -> int:
    """Restore SAM's own attention ``forward`` on every module :func:`enable_sdpa` changed."""
    n = 0
    for m in _attention_modules(module):
        if getattr(m, _FLAG, False):
            del m.forward  # the instance attribute; the class's forward is visible again
            delattr(m, _FLAG)
            n += 1
    return n


def sdpa_enabled(module: nn.Module) -> bool:
    """True when every SAM attention block inside ``module`` uses SDPA (False when there is none)."""
    mods = _attention_modules(module)
    return bool(mods) and all(getattr(m, _FLAG, False) for m in mods)
