"""TPAVI: published layout and output (literal re-implementation below), linear-memory order, wrapper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.fusion import build_fusion
from stbava.model.fusion.tpavi import TPAVI, TPAVIFusion


class LiteralTPAVI(nn.Module):
    """AVSBench ``TPAVIModule(in_channels, mode='dot')`` (dimension 3, bn_layer), computed the published way.

    Written from the published forward, step by step: the aligned audio is repeated to ``[B,C,T,H,W]``,
    ``phi`` runs on that map, the full ``[B,N,N]`` matrix ``theta^T phi`` is formed and divided by N.
    """

    def __init__(self, in_channels: int = 256) -> None:
        super().__init__()
        self.inter = in_channels // 2
        self.align_channel = nn.Linear(128, in_channels)
        self.norm_layer = nn.LayerNorm(in_channels)
        self.g = nn.Conv3d(in_channels, self.inter, kernel_size=1)
        self.W_z = nn.Sequential(nn.Conv3d(self.inter, in_channels, kernel_size=1),
                                 nn.BatchNorm3d(in_channels))
        nn.init.constant_(self.W_z[1].weight, 0)
        nn.init.constant_(self.W_z[1].bias, 0)
        self.theta = nn.Conv3d(in_channels, self.inter, kernel_size=1)
        self.phi = nn.Conv3d(in_channels, self.inter, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bs, h, w = x.size(0), x.shape[-2], x.shape[-1]
        audio_temp = self.align_channel(audio)  # [bs, T, C]
        a = audio_temp.permute(0, 2, 1).unsqueeze(-1).unsqueeze(-1).repeat(1, 1, 1, h, w)  # [bs, C, T, H, W]
        g_x = self.g(x).view(bs, self.inter, -1).permute(0, 2, 1)  # [bs, THW, C']
        theta_x = self.theta(x).view(bs, self.inter, -1).permute(0, 2, 1)  # [bs, THW, C']
        phi_x = self.phi(a).view(bs, self.inter, -1)  # [bs, C', THW]
        f = torch.matmul(theta_x, phi_x)  # [bs, THW, THW]
        f_div_c = f / f.size(-1)
        y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous().view(bs, self.inter, *x.size()[2:])
        z = self.W_z(y) + x
        z = self.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return z, audio_temp


def _randomised_reference(seed: int = 0) -> LiteralTPAVI:
    """Reference with every parameter and BN buffer random (the published zero BN init would hide W_z)."""
    torch.manual_seed(seed)
    ref = LiteralTPAVI()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        bn = ref.W_z[1]
        bn.weight.copy_(torch.rand_like(bn.weight) + 0.5)
        bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.1)
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return ref


def _inputs(b: int = 2, t: int = 3, hw: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 256, t, hw, hw, generator=g), torch.rand(b, t, 128, generator=g) * 2


def test_published_state_dict_loads_strictly_with_same_layout():
    ref, mine = LiteralTPAVI(), TPAVI(in_channels=256)
    ref_sd, mine_sd = ref.state_dict(), mine.state_dict()
    assert list(ref_sd) == list(mine_sd)
    assert {k: v.shape for k, v in ref_sd.items()} == {k: v.shape for k, v in mine_sd.items()}
    published = ["align_channel", "norm_layer", "g", "W_z", "theta", "phi"]
    assert [n for n, _ in mine.named_children()] == published
    mine.load_state_dict(ref_sd, strict=True)


@pytest.mark.parametrize("train", [False, True])
def test_output_equals_literal_published_computation(train):
    ref = _randomised_reference()
    mine = TPAVI(256)
    mine.load_state_dict(ref.state_dict(), strict=True)
    ref.train(train), mine.train(train)
    x, a = _inputs()
    with torch.no_grad():
        z_ref, a_ref = ref(x, a)
        z, a_out = mine(x, a)
    ln = ref.norm_layer
    z_init = F.layer_norm(x.permute(0, 2, 3, 4, 1), (256,), ln.weight, ln.bias).permute(0, 4, 1, 2, 3)
    assert (z_ref - z_init).abs().mean() > 0.1 * z_ref.abs().mean()  # the interaction term really counts
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_out, a_ref, rtol=1e-5, atol=1e-5)
    # in training the BN running statistics move the same way
    torch.testing.assert_close(mine.W_z[1].running_mean, ref.W_z[1].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.W_z[1].running_var, ref.W_z[1].running_var, rtol=1e-5, atol=1e-6)


def test_interaction_is_the_literal_nonlocal_aggregation():
    """The reassociated y against ``(theta^T phi / N) g`` formed literally from the same convolutions."""
    torch.manual_seed(3)
    m = TPAVI(256)
    x, audio = _inputs(b=1, t=2, hw=4)
    with torch.no_grad():
        a = m.align_channel(audio)
        a_map = a.transpose(1, 2)[..., None, None].expand(-1, -1, -1, 4, 4)
        theta, phi, g = (conv(inp).flatten(2) for conv, inp in ((m.theta, x), (m.phi, a_map), (m.g, x)))
        n = theta.shape[-1]
        y_literal = ((theta.transpose(1, 2) @ phi) / n) @ g.transpose(1, 2)  # [1,N,C']
        y = m.interaction(x, a)
    torch.testing.assert_close(y.flatten(2).transpose(1, 2), y_literal, rtol=1e-5, atol=1e-6)


def test_published_init_is_layernorm_of_the_input():
    torch.manual_seed(0)
    m = TPAVI(256).eval()
    x, a = _inputs(b=1)
    with torch.no_grad():
        z, a_out = m(x, a)
    ln = m.norm_layer
    want = F.layer_norm(x.permute(0, 2, 3, 4, 1), (256,), ln.weight, ln.bias, ln.eps).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_out, a @ m.align_channel.weight.T + m.align_channel.bias)


def test_wrapper_wiring_dense_is_embedding_plus_block_and_sparse_is_aligned_audio():
    ref = _randomised_reference(seed=5)
    fusion = TPAVIFusion(embed_dim=256, grid=5)
    fusion.tpavi.load_state_dict(ref.state_dict(), strict=True)
    x, a = _inputs(b=2, t=3, hw=5)
    image = x.transpose(1, 2)  # [B,T,C,h,w]
    with torch.no_grad():
        # training: each clip alone through the published block (BN statistics of that clip only)
        out = fusion.train()(image, a)
        for i in range(2):
            z_i, a_i = ref.train()(x[i:i + 1], a[i:i + 1])
            torch.testing.assert_close(out.dense[i], image[i] + z_i[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.sparse[i], a_i[0][:, None].expand(3, 2, 256), rtol=1e-5, atol=1e-5)
        out = fusion.eval()(image, a)
        z, a_al = ref.eval()(x, a)
    torch.testing.assert_close(out.dense, image + z.transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sparse[:, :, 1], a_al, rtol=1e-5, atol=1e-5)
    assert isinstance(build_fusion("tpavi", grid=5), TPAVIFusion)


def _profile_forward(module: nn.Module, x: torch.Tensor, a: torch.Tensor) -> tuple[int, int]:
    """``(peak bytes, largest op input in elements)`` of one forward, from the public ``torch.profiler``.

    Peak: with ``profile_memory=True`` every recorded op carries ``self_cpu_memory_usage``, the bytes its own
    allocations minus its own frees (children excluded), and a free outside any op is a ``[memory]`` event
    of its own. Summed in the order the ops finish, that running total is the memory held above the level at
    the start, op by op; its maximum is the peak (to op granularity). Largest input: with ``record_shapes``
    each op lists the shapes of its tensor inputs; an ``[N,N]`` matrix, once formed, is an input of the op
    that uses it.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                         record_shapes=True) as prof:
        module(x, a)
    events = prof.events()
    changes = sorted((ev.time_range.end, ev.self_cpu_memory_usage) for ev in events if ev.self_cpu_memory_usage)
    assert changes, "the profiler recorded no allocations"
    live = peak = 0
    for _, size in changes:
        live += size
        peak = max(peak, live)
    largest = max(math.prod(shape) for ev in events for shape in ev.input_shapes if shape)
    return peak, largest


def test_reassociated_order_saves_the_quadratic_matrix():
    torch.manual_seed(0)
    ref = LiteralTPAVI().eval()
    mine = TPAVI(256).eval()
    mine.load_state_dict(ref.state_dict())
    t, g = 5, 32
    n = t * g * g
    x, a = torch.randn(1, 256, t, g, g), torch.rand(1, t, 128)
    (literal, literal_in), (linear, linear_in) = _profile_forward(ref, x, a), _profile_forward(mine, x, a)
    nn_matrix, c_map = n * n * 4, 256 * n * 4  # one [N,N] float32 matrix; one input-sized [C,T,H,W] map
    # the SAM setting (T=5, 64x64): only the linear order is affordable here; the literal one is analytic
    n_sam = 5 * 64 * 64
    linear_sam, linear_sam_in = _profile_forward(mine, torch.randn(1, 256, 5, 64, 64), torch.rand(1, 5, 128))
    print(f"\nTPAVI peak allocated during one forward, T={t}, {g}x{g}: literal {literal / 2**20:.1f} MiB, "
          f"reassociated {linear / 2**20:.1f} MiB ([N,N] matrix {nn_matrix / 2**20:.1f} MiB, input map "
          f"{c_map / 2**20:.1f} MiB). SAM T=5 64x64: reassociated {linear_sam / 2**20:.1f} MiB measured; "
          f"literal [N,N] matrix {n_sam**2 * 4 / 2**30:.2f} GiB (x2 with f/N), input map "
          f"{256 * n_sam * 4 / 2**20:.1f} MiB")
    assert literal_in >= n * n  # the measurement sees the literal [N,N] matrix ...
    assert literal >= 2 * nn_matrix  # ... and f and f / N both live in the literal order
    assert linear_in <= 256 * n and linear_sam_in <= 256 * n_sam  # no op of the reassociated order takes more
    assert linear < nn_matrix / 4  # than an input-sized map: it never forms an [N,N] matrix
    assert linear < 4 * c_map and linear_sam < 4 * 256 * n_sam * 4  # a few input-sized maps
