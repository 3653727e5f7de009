"""Every fusion module inside the full model (AVSModel: module + SAM's mask decoder) and the stage recipes:
shapes, clip independence, training, trainable names, checkpoint round trip, and old boolean checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stbava.checkpoint import read_checkpoint, save_checkpoint
from stbava.config import FUSION_OPTIONS, FUSIONS, ConfigError, load_config
from stbava.losses import masked_bce
from stbava.pipeline.core.net import build_fusion_net
from stbava.pipeline.core.restore import restore_net
from stbava.pipeline.train.loop import saved_weights, set_trainable, trainable_predicate
from stbava.pipeline.train.stage2 import FUSION_PREFIXES
from stbava.pipeline.train.stage3 import adapter_prefixes

T, G = 2, 16  # the tiny encoder's 16x16 grid (config default encoder), 2 frames per clip


def _cfg(fusion: str, **model):
    depth = {"depth": 1} if "depth" in FUSION_OPTIONS[fusion] else {}  # tpavi and none have no depth
    return load_config(None, {"frames": T, "model": {"fusion": fusion, **depth, **model}})


def _inputs(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, T, 256, G, G, generator=g).half(), torch.rand(b, T, 128, generator=g) * 2


@pytest.mark.parametrize("fusion", FUSIONS)
def test_logits_shape_and_clips_never_mix(fusion):
    model = build_fusion_net(_cfg(fusion)).model.eval()
    assert model.fusion_name == fusion
    image, audio = _inputs(3)
    image2, audio2 = image.clone(), audio.clone()
    image2[1] = torch.randn_like(image2[1].float()).half()
    audio2[1] = torch.rand_like(audio2[1]) * 2
    with torch.no_grad():
        out, out2 = model(image, audio), model(image2, audio2)
        alone = model(image[2:], audio[2:])
    assert out.shape == (3, T, 224, 224) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out[[0, 2]], out2[[0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2:], alone, rtol=1e-5, atol=1e-5)  # batch size does not matter either
    assert (out[1] - out2[1]).abs().max() > 1e-3


@pytest.mark.parametrize("fusion", FUSIONS)
def test_stage_two_trains_every_fusion_parameter_and_steps_lower_the_loss(fusion):
    net = build_fusion_net(_cfg(fusion))
    names = set(set_trainable(net, trainable_predicate(FUSION_PREFIXES)))
    model_params = {n for n, _ in net.named_parameters() if n.startswith("model.")}
    assert names == model_params  # every parameter of the module and the decoder trains; the PE is a buffer
    for train_fusion in (True, False):  # stage three: the fusion module trains too, or stays frozen
        cfg = _cfg(fusion)
        cfg3 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_fusion=train_fusion))
        chosen = {n for n in model_params if trainable_predicate(adapter_prefixes(cfg3))(n)}
        assert chosen == (model_params if train_fusion else
                          {n for n in model_params if n.startswith("model.mask_decoder.")})

    image, audio = _inputs(2, seed=4)
    target = torch.zeros(2, T, 224, 224)
    target[:, :, 40:120, 60:160] = 1.0
    valid = torch.ones(2, T, dtype=torch.bool)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        return masked_bce(net.model(image, audio), target, valid)

    with torch.no_grad():
        before = loss().item()
    net.train()
    for _ in range(4):
        opt.zero_grad()
        loss().backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.9 * before, (before, after)


def _same_weights_and_logits(restored, original, image, audio) -> None:
    """Bit-identical tensors; logits to float32 noise (a frozen, restored net takes MultiheadAttention's
    inference fast path, which rounds differently: measured differences ~2e-7)."""
    sd = original.state_dict()
    assert restored.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in restored.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(restored(image, audio), original.eval()(image, audio), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_checkpoint_round_trip(fusion, tmp_path):
    cfg = _cfg(fusion)
    net = build_fusion_net(cfg)
    trainable = set_trainable(net, trainable_predicate(FUSION_PREFIXES))
    with torch.no_grad():  # move every weight and buffer off the init a restore would rebuild
        for p in net.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        image, audio = _inputs(2)
        net.model.train()(image, audio)  # and TPAVI's batch-norm running statistics
    save_checkpoint(tmp_path / "c.pt", kind="fusion", cfg=cfg, weights=saved_weights(net, trainable),
                    fingerprint=None)
    restored, rcfg = restore_net(read_checkpoint(tmp_path / "c.pt"))
    assert rcfg.model.fusion == fusion
    keys = {k.split(".")[1] for k in restored.state_dict() if k.startswith("model.")}
    flat = {"stbava": {"audio_embed_layer", "layers"}, "none": {"audio_embed_layer"}}
    assert keys == flat.get(fusion, {"fusion"}) | {"pe_layer", "mask_decoder"}
    _same_weights_and_logits(restored.model, net.model, image, audio)


@pytest.mark.parametrize("old, new", [(True, "stbava"), (False, "none")])
def test_checkpoints_saved_with_the_boolean_fusion_setting_still_load(old, new, tmp_path):
    """Before the registry, ``model.fusion`` was true (ST-BAVA) or false (decoder-only); such a file's config
    holds the boolean. The weights layout was already today's (top-level audio_embed_layer / layers)."""
    cfg = _cfg(new)
    net = build_fusion_net(cfg)
    trainable = set_trainable(net, trainable_predicate(FUSION_PREFIXES))
    save_checkpoint(tmp_path / "c.pt", kind="fusion", cfg=cfg, weights=saved_weights(net, trainable),
                    fingerprint=None)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["config"]["model"]["fusion"] = old  # what the earlier version wrote
    torch.save(payload, tmp_path / "old.pt")
    restored, rcfg = restore_net(read_checkpoint(tmp_path / "old.pt"))
    assert rcfg.model.fusion == new
    image, audio = _inputs(1)
    _same_weights_and_logits(restored.model, net.model, image, audio)


def test_similarity_features_exist_for_stbava_only():
    image, audio = _inputs(1)
    for fusion in FUSIONS:
        model = build_fusion_net(_cfg(fusion)).model.eval()
        assert model.supports_fuse == (fusion == "stbava")
        if fusion != "stbava":
            with pytest.raises(TypeError, match="before/after"):
                model.fuse(image, audio)


def test_center_audio_applies_to_the_normalised_projections_only():
    mean = torch.rand(128)
    for fusion in FUSIONS:
        torch.manual_seed(0)
        plain = build_fusion_net(_cfg(fusion)).model
        centred = build_fusion_net(_cfg(fusion), mean_audio=mean).model
        same = all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), centred.state_dict().values()))
        assert same == (fusion not in ("stbava", "none")), fusion
        assert plain.supports_center_audio == (fusion in ("stbava", "none"))


@pytest.mark.parametrize("switch", [{"temporal": False}, {"bidirectional": False}, {"spatial_mode": "paper"}])
def test_stbava_ablation_switches_are_refused_for_the_published_modules(switch):
    for fusion in ("tpavi", "han", "cmran", "jca"):
        with pytest.raises(ConfigError, match="ST-BAVA ablation switches.*--fusion stbava"):
            _cfg(fusion, **switch)
    assert _cfg("stbava", **switch).model.fusion == "stbava"
    assert _cfg("none", **switch).model.fusion == "none"  # ignored, as with the former fusion: false


def test_building_a_net_leaves_the_global_rng_alone():
    """The builders seeded the global torch RNG with train.seed (fails on that code): a caller's random
    stream changed by building a model. The init is still a function of the seed alone."""
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = build_fusion_net(_cfg("stbava"))
    assert torch.equal(torch.rand(3), expected)
    again = build_fusion_net(_cfg("stbava"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
