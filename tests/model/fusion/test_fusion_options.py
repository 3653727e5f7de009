"""Every ``model.*`` sizing option is used by the chosen fusion module or refused by name before anything trains.

Before this rule, TPAVI, HAN, CMRAN and JCA took none of ``model.depth`` / ``num_heads`` / ``mlp_dim`` /
``attn_dropout``: a depth sweep with ``fusion: han`` trained the same model three times under three labels.
The tests below that build HAN / CMRAN / JCA at a given size, refuse an option, or read a version-1
checkpoint as built fail on that code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stbava.checkpoint import read_checkpoint, save_checkpoint
from stbava.config import ConfigError, load_config
from stbava.model.fusion.cmran import CMRANFusion
from stbava.model.fusion.han import HANLayer
from stbava.model.fusion.jca import JCAFusion
from stbava.pipeline.core.net import build_fusion_net
from stbava.pipeline.core.restore import restore_net
from stbava.pipeline.train.loop import saved_weights, set_trainable, trainable_predicate
from stbava.pipeline.train.stage2 import FUSION_PREFIXES

T = 2


def _model(fusion: str, **options):
    cfg = load_config(None, {"frames": T, "model": {"fusion": fusion, **options}})
    return build_fusion_net(cfg).model, cfg


def _mhas(module: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]


def test_han_takes_depth_heads_ffn_width_and_dropout():
    model, _ = _model("han", depth=3, num_heads=2, mlp_dim=64, attn_dropout=0.2)
    layers = [m for m in model.fusion_module.modules() if isinstance(m, HANLayer)]
    assert len(layers) == 3
    assert {m.num_heads for m in _mhas(model.fusion_module)} == {2}
    assert {m.dropout for m in _mhas(model.fusion_module)} == {0.2}
    assert {layer.linear1.out_features for layer in layers} == {64}


def test_published_modules_default_to_their_published_structure():
    """HAN (Tian et al.): 1 layer, 1 head, FFN 512; CMRAN (Xu et al.): 2 encoder layers per modality, 4 heads,
    FFN 2048; JCA: one pass of the joint cross-attention. A ``depth: 7`` left from ST-BAVA is not taken over."""
    han, _ = _model("han")
    assert len([m for m in han.modules() if isinstance(m, HANLayer)]) == 1
    assert {m.num_heads for m in _mhas(han)} == {1}
    cmran, _ = _model("cmran")
    fusion = cmran.fusion_module
    assert len(fusion.video_encoder) == 1 + 2 and len(fusion.audio_encoder) == 1 + 2  # affine + 2 layers
    assert {m.num_heads for m in _mhas(fusion)} == {4}
    assert fusion.video_encoder[1].linear1.out_features == 2048
    assert _model("jca")[0].fusion_module.depth == 1


def test_cmran_depth_is_its_encoder_layers():
    model, _ = _model("cmran", depth=3, num_heads=2, mlp_dim=32)
    fusion = model.fusion_module
    assert isinstance(fusion, CMRANFusion)
    assert [type(m).__name__ for m in fusion.video_encoder] == ["Linear"] + ["TransformerEncoderLayer"] * 3
    assert fusion.audio_decoder.linear1.out_features == 32
    assert {m.num_heads for m in _mhas(fusion)} == {2}


def test_jca_depth_feeds_the_attended_features_back_through_the_same_block():
    """depth 2 = the depth-1 module's joint cross-attention applied twice by hand, same weights."""
    torch.manual_seed(0)
    two = JCAFusion(embed_dim=32, grid=4, frames=T, depth=2).eval()
    one = JCAFusion(embed_dim=32, grid=4, frames=T, depth=1).eval()
    one.load_state_dict(two.state_dict())  # recursion shares weights: the two have the same parameters
    x_a, x_v = torch.randn(3, T, 16), torch.randn(3, T, 16)
    with torch.no_grad():
        by_hand = one.jca(*one.jca(x_a, x_v))
        a, v = x_a, x_v
        for _ in range(two.depth):
            a, v = two.jca(a, v)
    torch.testing.assert_close(a, by_hand[0])
    torch.testing.assert_close(v, by_hand[1])
    image, audio = torch.randn(1, T, 32, 4, 4), torch.randn(1, T, 128)
    with torch.no_grad():
        assert not torch.allclose(two(image, audio).dense, one(image, audio).dense)


@pytest.mark.parametrize("fusion, option", [
    ("tpavi", {"depth": 2}), ("tpavi", {"num_heads": 2}), ("none", {"depth": 3}), ("none", {"mlp_dim": 64}),
    ("jca", {"num_heads": 4}), ("jca", {"attn_dropout": 0.0}), ("han", {"center_audio": True}),
    ("cmran", {"center_audio": False}),
])
def test_an_option_the_module_does_not_take_is_refused_by_name(fusion, option):
    (name, value), = option.items()
    with pytest.raises(ConfigError, match=rf"model\.{name}={value!r}: not an option of fusion '{fusion}'"):
        load_config(None, {"model": {"fusion": fusion, **option}})


def test_sizes_are_checked_before_anything_builds():
    with pytest.raises(ConfigError, match="num_heads must divide"):
        load_config(None, {"model": {"fusion": "han", "num_heads": 3}})
    with pytest.raises(ConfigError, match="depth must be >= 1"):
        load_config(None, {"model": {"fusion": "cmran", "depth": 0}})
    assert load_config(None, {"model": {"depth": 0}}).model.depth == 0  # ST-BAVA at depth 0: E + E


def test_a_depth_sweep_with_han_trains_three_different_models():
    counts = [sum(p.numel() for p in _model("han", depth=d)[0].parameters()) for d in (1, 2, 3)]
    assert len(set(counts)) == 3 and counts == sorted(counts)


def test_a_version_1_checkpoint_of_a_published_module_loads_as_it_was_built(tmp_path):
    """Version-1 files recorded ST-BAVA's sizes (depth 5, 8 heads, ...) for every module, unused by HAN; read
    as they were built (one HAN layer), not as a 5-layer HAN that the weights do not fit."""
    model_net = build_fusion_net(load_config(None, {"frames": T, "model": {"fusion": "han"}}))
    cfg = load_config(None, {"frames": T, "model": {"fusion": "han"}})
    names = set_trainable(model_net, trainable_predicate(FUSION_PREFIXES))
    save_checkpoint(tmp_path / "c.pt", kind="fusion", cfg=cfg, weights=saved_weights(model_net, names),
                    fingerprint=None)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["version"] = 1
    payload["config"]["model"].update(depth=5, num_heads=8, mlp_dim=256, attn_dropout=0.1, center_audio=True)
    torch.save(payload, tmp_path / "v1.pt")
    restored, rcfg = restore_net(read_checkpoint(tmp_path / "v1.pt"))
    assert rcfg.model.depth is None
    assert len([m for m in restored.modules() if isinstance(m, HANLayer)]) == 1
