"""Audio adapters inside SAM's image encoder: zero-init equivalence, gradients, checkpointing, key names."""

from __future__ import annotations

import torch

from stbava.encoders.image import build_image_encoder
from stbava.model.adapters import AdaptedImageEncoder


def _frames(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 256, 256, generator=g) * 255, torch.rand(n, 128, generator=g) * 2


def _adapted(zero_init: bool, seed: int = 0) -> AdaptedImageEncoder:
    torch.manual_seed(seed)
    return AdaptedImageEncoder(build_image_encoder("tiny", seed=0), hidden=32, zero_init=zero_init)


def test_key_names_follow_the_published_prompt_generator():
    enc = _adapted(True)
    keys = {k for k in enc.state_dict() if k.startswith("prompt_generator.")}
    assert keys == {f"prompt_generator.lightweight_mlp_{i}.0.{p}" for i in range(2) for p in ("weight", "bias")} | {
        "prompt_generator.shared_mlp.weight", "prompt_generator.shared_mlp.bias"}
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == keys


def test_zero_init_reproduces_the_plain_encoder():
    enc = _adapted(True)
    frames, audio = _frames()
    with torch.no_grad():
        torch.testing.assert_close(enc(frames, audio), enc.frozen(frames), rtol=1e-5, atol=1e-5)
        other = _adapted(False)
        assert not torch.allclose(other(frames, audio), other.frozen(frames), atol=1e-4)


def test_gradient_reaches_every_adapter():
    enc = _adapted(False).train()
    frames, audio = _frames()
    enc(frames, audio).square().mean().backward()
    for name, p in enc.prompt_generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in enc.frozen.parameters())
    # zero init: only the shared output layer learns at step 0; after one step every adapter does
    enc = _adapted(True).train()
    opt = torch.optim.SGD(enc.prompt_generator.parameters(), lr=0.1)
    enc(frames, audio).square().mean().backward()
    assert enc.prompt_generator.shared_mlp.weight.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    enc(frames, audio).square().mean().backward()
    for name, p in enc.prompt_generator.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    frames, audio = _frames()
    grads = []
    outs = []
    for ckpt in (False, True):
        enc = _adapted(False).train()
        out = enc(frames, audio, checkpoint=ckpt)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(enc.prompt_generator.shared_mlp.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
