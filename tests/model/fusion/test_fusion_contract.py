"""The fusion contract, checked for every registered module (timm-style registry-wide tests, tiny grids)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.fusion import FusionPrompts, build_fusion, list_fusions

B, T, C, G, A = 2, 3, 64, 8, 128  # a narrow embedding keeps these fast; widths at ViT-H: last test
# modules whose weights depend on the clip length are built for the test's T; CMRAN's 2048-wide FFNs shrink
OPTIONS: dict[str, dict] = {"jca": {"frames": T}, "cmran": {"dim_feedforward": 128}, "stbava": {"depth": 2}}
PE = torch.randn(1, C, G, G, generator=torch.Generator().manual_seed(9))  # stands in for SAM's dense PE


def _build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_fusion(name, embed_dim=C, audio_dim=A, grid=G, **{**OPTIONS.get(name, {}), **kw})


def _inputs(b: int = B, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, T, C, G, G, generator=g), torch.rand(b, T, A, generator=g) * 2  # VGGish is >= 0


def _no_dropout(m: nn.Module) -> nn.Module:
    """Zero every dropout so train-mode outputs are deterministic (batch statistics still apply)."""
    for sub in m.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        elif isinstance(sub, nn.MultiheadAttention):
            sub.dropout = 0.0
    return m


NAMES = list_fusions()


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtype_and_input_checks(name):
    m = _build(name).eval()
    image, audio = _inputs()
    with torch.no_grad():
        out = m(image.half(), audio.half(), PE)  # cached embeddings are float16
    assert isinstance(out, FusionPrompts)
    assert out.dense.shape == (B, T, C, G, G) and out.sparse.shape == (B, T, 2, C)
    assert out.dense.dtype == out.sparse.dtype == torch.float32
    assert torch.isfinite(out.dense).all() and torch.isfinite(out.sparse).all()
    with pytest.raises(ValueError, match="image embeddings"):
        m(image[:, :, :, :4], audio, PE)
    with pytest.raises(ValueError, match="audio"):
        m(image, audio[..., :64], PE)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_clips_never_mix(name, train):
    """Perturbing clip 1 leaves clips 0 and 2 bit-identical (train: dropout off, batch statistics on)."""
    m = _no_dropout(_build(name)).train(train)
    image, audio = _inputs(b=3)
    image2, audio2 = image.clone(), audio.clone()
    image2[1] += torch.randn_like(image2[1])
    audio2[1] = torch.rand_like(audio2[1]) * 2
    with torch.no_grad():
        out, out2 = m(image, audio, PE), m(image2, audio2, PE)
    for field in ("dense", "sparse"):
        a, b = getattr(out, field), getattr(out2, field)
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]), field
        assert not torch.allclose(a[1], b[1]), field  # ... while clip 1 itself did change


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    """One backward through a loss of dense and sparse: every parameter gets a non-zero gradient.

    Parameters are first moved a little off their init, so zero-initialised gates (TPAVI's published
    BN affine) do not hide the wiring. Eval mode: in training, BatchNorm removes a bias placed right before it
    (TPAVI's ``W_z.0.bias``) exactly, which is the published architecture, not a wiring fault.
    """
    m = _build(name).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    image, audio = _inputs()
    out = m(image, audio, PE)
    g = torch.Generator().manual_seed(7)  # random weights: a plain sum of LayerNorm outputs has zero gradient
    loss = (out.dense * torch.randn(out.dense.shape, generator=g)).mean() + \
        (out.sparse * torch.randn(out.sparse.shape, generator=g)).mean()
    loss.backward()
    params = list(m.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    dead = [n for n, p in params
            if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() < 1e-9]
    assert not dead, f"no gradient for {dead}"


def _task(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic task: dense must become E + an audio-dependent, spatially varying pattern; sparse a code."""
    g = torch.Generator().manual_seed(seed)
    image, audio = torch.randn(4, T, C, G, G, generator=g), torch.rand(4, T, A, generator=g) * 2
    proj = torch.randn(A, C, generator=g) / A ** 0.5
    code = torch.tanh((audio - 1) @ proj)  # [4,T,C]
    mask = (torch.arange(G)[:, None] < G // 2).float().expand(G, G)  # audio pattern on the top half only
    target_dense = image + code[..., None, None] * mask
    target_sparse = code[:, :, None].expand(-1, -1, 2, -1)
    return image, audio, target_dense, target_sparse


def _loss(out: FusionPrompts, target_dense: torch.Tensor, target_sparse: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.dense, target_dense) + F.mse_loss(out.sparse, target_sparse)


def _train(m: nn.Module, steps: int, lr: float = 3e-3) -> None:
    image, audio, td, ts = _task()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        _loss(m(image, audio, PE), td, ts).backward()
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_adam_steps_lower_the_loss_and_use_the_audio(name):
    m = _build(name)
    image, audio, td, ts = _task()

    def eval_loss() -> float:
        with torch.no_grad():
            return _loss(m.eval()(image, audio, PE), td, ts).item()

    before = eval_loss()
    _train(m, steps=25)
    after = eval_loss()
    assert after < 0.75 * before, (before, after)  # measured ratios 0.37-0.59
    if name == "none":  # the baseline's visual src is E itself: audio reaches the decoder as tokens only
        return
    with torch.no_grad():  # after training, the audio changes the visual src too (not only the tokens)
        d1 = m(image, audio, PE).dense
        d2 = m(image, audio.flip(0), PE).dense
    assert (d1 - d2).abs().mean() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    m = _build(name, seed=0)
    _train(m, steps=2)  # moves parameters and any running statistics off their init
    fresh = _build(name, seed=123)
    fresh.load_state_dict(m.state_dict(), strict=True)
    image, audio = _inputs()
    with torch.no_grad():
        a, b = m.eval()(image, audio, PE), fresh.eval()(image, audio, PE)
    assert torch.equal(a.dense, b.dense) and torch.equal(a.sparse, b.sparse)


# Trainable parameters at the ViT-H setting (embed 256, grid 64, T 5), counted by hand from each architecture.
MHA, LN = 4 * 256 * 256 + 4 * 256, 2 * 256


def _lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _ffn_layer(ffn: int) -> int:  # post-norm attention + FFN layer: MHA, 2 linears, 2 LayerNorms
    return MHA + _lin(256, ffn) + _lin(ffn, 256) + 2 * LN


_BAVA_BLOCK = 4 * _lin(256, 256) * 2 + 2 * MHA + 8 * LN  # 4 MLPs (256 hidden), 2 MHAs, 8 LayerNorms
HAND_COUNTS = {
    "stbava": _lin(128, 256) + 5 * _BAVA_BLOCK,  # audio projection + 5 blocks (config default depth)
    "none": _lin(128, 256),
    "tpavi": _lin(128, 256) + LN + 3 * _lin(256, 128) + _lin(128, 256) + 2 * 256,
    "han": _lin(128, 256) + _lin(256, 1, False) + _lin(256, 256) + (MHA + _ffn_layer(512))
    + _lin(256, 512) + LN,
    "cmran": (_lin(256, 256) + _lin(128, 256) + _lin(256, 128) + _lin(128, 256) + _lin(256, 128)
              + _lin(128, 128) + _lin(128, 1))  # audio-guided attention
    + _lin(256, 256) + _lin(128, 256) + 4 * _ffn_layer(2048)  # temporal relation encoders
    + _lin(256, 256) + _lin(128, 256) + 2 * _ffn_layer(2048)  # cross-modal relation attention
    + MHA + LN + _lin(256, 256) + LN,  # audio-video interaction, map projection
    "jca": _lin(256, 1, False) + _lin(128, 128) + _lin(256, 128) + 2 * (25 + 5 * 32 + 256 * 32 + 32 * 5)
    + _lin(128, 256) + _lin(128, 512) + LN,
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_trainable_parameters_at_the_vit_h_setting(name):
    with torch.device("meta"):
        m = build_fusion(name, embed_dim=256, audio_dim=128, grid=64)
    count = sum(p.numel() for p in m.parameters() if p.requires_grad)
    print(f"\n{name}: {count:,} trainable parameters (embed 256, grid 64, T 5)")
    assert count == HAND_COUNTS[name]
