"""Stage three: step-0 equivalence with stage two, what trains, checkpoint round trip, encoder checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stbava.checkpoint import CheckpointFormatError, read_checkpoint, save_checkpoint
from stbava.config import load_config
from stbava.encoders.audio import build_vggish, embed_audio
from stbava.encoders.fast_attention import enable_sdpa
from stbava.encoders.fingerprint import encoder_fingerprint
from stbava.encoders.image import build_image_encoder
from stbava.pipeline.core.net import build_adapter_net, build_fusion_net
from stbava.pipeline.core.restore import restore_net
from stbava.pipeline.train.loop import saved_weights, set_trainable, trainable_predicate
from stbava.pipeline.train.stage3 import adapter_prefixes, check_encoder_matches, stage_three_config

T = 2


@pytest.fixture()
def stage_two(tmp_path):
    cfg = load_config(None, {"frames": T, "encoder": {"name": "tiny"}, "model": {"depth": 1, "attn_dropout": 0.0}})
    net = build_fusion_net(cfg)
    for p in net.parameters():  # make it a "trained" model, not the init
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "stage2.pt"
    save_checkpoint(path, kind="fusion", cfg=cfg, weights=net.state_dict(),
                    fingerprint=encoder_fingerprint(cfg.encoder, cfg.frames))
    return cfg, net, read_checkpoint(path)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(1, T, 3, 256, 256, generator=g) * 255
    mels = torch.randn(1, T, 1, 96, 64, generator=g)
    return frames, mels


def test_zero_init_adapters_reproduce_the_stage_two_model(stage_two):
    cfg, net2, payload = stage_two
    cfg3 = stage_three_config(payload, {})
    net3 = build_adapter_net(cfg3, payload).eval()
    frames, mels = _inputs()
    enc = build_image_encoder("tiny", seed=cfg.encoder.seed)
    enable_sdpa(enc)  # the encoder that made the cache (extraction's default) is what stage three must reproduce
    vgg = build_vggish(seed=cfg.encoder.seed)
    with torch.no_grad():
        emb = enc(frames[0])[None]
        aud = embed_audio(vgg, mels[0])[None]
        want = net2.eval()(image_embeddings=emb, audio_embeddings=aud)
        got = net3(frames=frames, log_mels=mels)
    assert torch.equal(got, want)


def test_stage_three_trains_adapters_and_decoder_only(stage_two):
    _, _, payload = stage_two
    cfg3 = stage_three_config(payload, {"train": {"grad_checkpointing": True}})
    assert cfg3.train.epochs == 15 and not cfg3.train.train_fusion  # (model.adapters was removed: it did nothing)
    net = build_adapter_net(cfg3, payload).train()
    names = set(set_trainable(net, trainable_predicate(adapter_prefixes(cfg3))))
    assert any(n.startswith("embedder.image_encoder.prompt_generator.") for n in names)
    assert any(n.startswith("model.mask_decoder.") for n in names)
    assert not any(n.startswith(("model.layers.", "embedder.image_encoder.frozen.", "embedder.vggish."))
                   for n in names)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    frames, mels = _inputs(1)
    for _ in range(2):  # zero-init output layer: the per-block MLPs receive gradient from the second step on
        loss = net(frames=frames, log_mels=mels).sigmoid().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(("embedder.image_encoder.prompt_generator.", "model.mask_decoder.")) for k in changed)
    pg = {k for k in after if k.startswith("embedder.image_encoder.prompt_generator.")}
    assert pg <= changed, f"adapters without update: {sorted(pg - changed)}"


def test_adapter_checkpoint_round_trip(stage_two, tmp_path):
    _, _, payload = stage_two
    cfg3 = stage_three_config(payload, {})
    net = build_adapter_net(cfg3, payload)
    names = set_trainable(net, trainable_predicate(adapter_prefixes(cfg3)))
    with torch.no_grad():
        net.embedder.image_encoder.prompt_generator.shared_mlp.weight.normal_()
    from stbava.digest import file_sha256

    path = tmp_path / "adapters.pt"
    save_checkpoint(path, kind="adapters", cfg=cfg3, weights=saved_weights(net, names),
                    fingerprint=payload["fingerprint"],  # as finetune-adapters records it: no record, no restore
                    extra={"init_checkpoint": payload["path"], "init_digest": file_sha256(payload["path"])})
    restored, _ = restore_net(read_checkpoint(path))
    frames, mels = _inputs(2)
    with torch.no_grad():
        # equal up to kernel choice (nn.MultiheadAttention picks another path when no parameter needs grad)
        torch.testing.assert_close(restored(frames=frames, log_mels=mels), net.eval()(frames=frames, log_mels=mels), atol=1e-5, rtol=0)
    # the adapter checkpoint holds no frozen encoder weights
    assert not any("frozen" in k or "vggish" in k for k in read_checkpoint(path)["weights"])


def test_encoder_of_another_seed_is_refused(stage_two):
    cfg, _, payload = stage_two
    other = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, seed=cfg.encoder.seed + 1))
    with pytest.raises(CheckpointFormatError, match="another encoder"):
        check_encoder_matches(other, payload)
