"""The shared training loop: which parameters move, exact resume, checkpoints, metrics.jsonl."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from stbava.checkpoint import CheckpointFormatError, read_checkpoint
from stbava.config import ConfigError, load_config
from stbava.losses import masked_bce
from stbava.pipeline.core.distributed import DistInfo
from stbava.pipeline.core.net import build_fusion_net
from stbava.pipeline.train.batches import epoch_batches
from stbava.pipeline.train.loop import fit, trainable_predicate
from stbava.pipeline.train.stage2 import FUSION_PREFIXES

T, G = 2, 16  # frames per clip (2 keep the temporal path at the least compute), grid of the tiny encoder


class RandomClips(Dataset):
    """Cached-embedding-shaped clips whose masks follow the audio (so training has a signal)."""

    def __init__(self, n: int, seed: int, annotated: int = T) -> None:
        g = torch.Generator().manual_seed(seed)
        self.image = torch.randn(n, T, 256, G, G, generator=g).half()
        self.audio = torch.rand(n, T, 128, generator=g) * 2
        self.masks = torch.zeros(n, T, 224, 224)
        for i in range(n):
            for t in range(T):
                if self.audio[i, t, 0] > 1:
                    self.masks[i, t, 50:150, 60:170] = 1
        self.valid = torch.zeros(n, T, dtype=torch.bool)
        self.valid[:, :annotated] = True
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"clip_id": f"c{i:03d}", "image_embeddings": self.image[i], "audio_embeddings": self.audio[i],
                "masks": self.masks[i], "mask_valid": self.valid[i]}


def _cfg(**train):
    base = {"frames": T, "encoder": {"name": "tiny"}, "model": {"depth": 1},
            "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "seed": 7, **train}}
    return load_config(None, base)


def _weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_masked_bce_uses_only_annotated_frames():
    logits = torch.zeros(1, 2, 4, 4)
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 1] = 1  # frame 2 is all wrong, but unannotated
    valid = torch.tensor([[True, False]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], masks[0, 0])
    assert torch.allclose(masked_bce(logits, masks, valid), expected)


def test_epoch_batches_deterministic_and_cover_all():
    a = epoch_batches(10, 3, seed=1, epoch=0, dist=DistInfo())
    b = epoch_batches(10, 3, seed=1, epoch=0, dist=DistInfo())
    c = epoch_batches(10, 3, seed=1, epoch=1, dist=DistInfo())
    assert a == b and a != c
    assert sorted(i for bt in a for i in bt) == list(range(10))
    # two ranks split every global batch into disjoint halves that together give the same batch
    r0 = epoch_batches(10, 4, 1, 0, DistInfo(rank=0, world=2))
    r1 = epoch_batches(10, 4, 1, 0, DistInfo(rank=1, world=2))
    full = epoch_batches(10, 4, 1, 0, DistInfo())
    assert [x + y for x, y in zip(r0, r1)] == full


def test_one_step_changes_exactly_the_trainable_parameters(tmp_path):
    cfg = _cfg(max_steps=1, epochs=1)
    net = build_fusion_net(cfg)
    before = _weights(net)
    # stage-three-like selection: the ST-BAVA layers stay frozen, only decoder + projection train
    prefixes = ("model.audio_embed_layer", "model.mask_decoder")
    fit(cfg, net, RandomClips(4, 0), None, tmp_path / "run", kind="fusion", trainable=trainable_predicate(prefixes),
        fingerprint=None, device=torch.device("cpu"), progress=False)
    after = _weights(net)
    params = dict(net.named_parameters())
    changed = {k for k in params if not torch.equal(before[k], after[k])}
    frozen = {k for k in params if not k.startswith(prefixes)}
    assert frozen and not (changed & frozen), "a frozen parameter moved"
    assert any(k.startswith("model.layers.") for k in frozen)
    # every trainable tensor that received a gradient moved (the dropped mask token / IoU head get none)
    assert {k for k in changed if k.startswith("model.audio_embed_layer")} == {
        "model.audio_embed_layer.weight", "model.audio_embed_layer.bias"}
    assert any(k.startswith("model.mask_decoder.transformer") for k in changed)
    for k, v in net.named_buffers():
        assert torch.equal(before[k], v), f"buffer {k} changed"


def test_resume_is_exact(tmp_path):
    """Stopped in epoch 2 and resumed: the same weights and losses as a straight run. The cosine schedule with
    warm-up is the case that carries state (the step count decides the lr); a fixed lr resumes the same way."""
    schedule = {"lr_schedule": "cosine", "warmup_steps": 2}
    data = RandomClips(6, 1)
    cfg = _cfg(epochs=2, batch_size=2, **schedule)  # 3 steps per epoch, 6 steps total
    straight = build_fusion_net(cfg)
    fit(cfg, straight, data, data, tmp_path / "a", kind="fusion", trainable=trainable_predicate(FUSION_PREFIXES),
        fingerprint=None, device=torch.device("cpu"), progress=False)

    half = _cfg(epochs=2, batch_size=2, max_steps=4, save_every_steps=1, **schedule)  # stop mid-epoch 2
    net = build_fusion_net(half)
    fit(half, net, data, data, tmp_path / "b", kind="fusion", trainable=trainable_predicate(FUSION_PREFIXES),
        fingerprint=None, device=torch.device("cpu"), progress=False)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["state"]["loop"]["step"] == 4
    resumed = build_fusion_net(cfg)  # a fresh process would start from a fresh model too
    fit(cfg, resumed, data, data, tmp_path / "b", kind="fusion", trainable=trainable_predicate(FUSION_PREFIXES),
        fingerprint=None, device=torch.device("cpu"), progress=False)

    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    loss = lambda d: [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "step"]
    assert loss(tmp_path / "a") == loss(tmp_path / "b")
    assert len(loss(tmp_path / "a")) == 6


def test_cosine_schedule_sets_the_lr_of_every_step(tmp_path):
    b = 1e-3  # warm-up 2 steps (b/2, b), then cosine over the 4 remaining steps of the 6: b, .854b, .5b, .146b
    cfg = _cfg(epochs=2, batch_size=2, lr=b, lr_schedule="cosine", warmup_steps=2)
    net = build_fusion_net(cfg)
    fit(cfg, net, RandomClips(6, 1), None, tmp_path / "a", kind="fusion",
        trainable=trainable_predicate(FUSION_PREFIXES), fingerprint=None, device=torch.device("cpu"), progress=False)
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "step"]
    assert lrs == pytest.approx([b / 2, b, b, b * 0.8535534, b / 2, b * 0.1464466], rel=1e-6)
    optimizer = read_checkpoint(tmp_path / "a" / "last.pt")["state"]["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(b * 0.1464466, rel=1e-6)  # what Adam last used


def test_constant_schedule_is_the_published_fixed_lr(tmp_path):
    cfg = _cfg(epochs=1, batch_size=2, lr=3e-4)
    fit(cfg, build_fusion_net(cfg), RandomClips(4, 1), None, tmp_path / "a", kind="fusion",
        trainable=trainable_predicate(FUSION_PREFIXES), fingerprint=None, device=torch.device("cpu"), progress=False)
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if r["kind"] == "step"] == [3e-4, 3e-4]


def test_unknown_lr_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="lr_schedule"):
        _cfg(lr_schedule="step")


def test_checkpoints_best_last_and_metrics(tmp_path):
    data = RandomClips(4, 2)
    cfg = _cfg(epochs=2)
    net = build_fusion_net(cfg)
    summary = fit(cfg, net, data, data, tmp_path / "r", kind="fusion", fingerprint=None,
                  trainable=trainable_predicate(FUSION_PREFIXES), device=torch.device("cpu"), progress=False)
    run = tmp_path / "r"
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file() and (run / "config.yaml").is_file()
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(0.0 <= r["val_miou"] <= 1.0 for r in epochs)
    assert summary["best_miou"] == max(r["val_miou"] for r in epochs)
    payload = read_checkpoint(run / "best.pt")
    # only trainable weights + the PE buffer: nothing of an image encoder
    assert all(k.startswith("model.") for k in payload["weights"])
    assert "model.pe_layer.positional_encoding_gaussian_matrix" in payload["weights"]
    assert not any(f.name.endswith(".tmp") for f in run.iterdir())


def test_resume_with_other_config_is_refused(tmp_path):
    data = RandomClips(2, 3)
    cfg = _cfg(epochs=1)
    fit(cfg, build_fusion_net(cfg), data, None, tmp_path / "r", kind="fusion", fingerprint=None,
        trainable=trainable_predicate(FUSION_PREFIXES), device=torch.device("cpu"), progress=False)
    other = load_config(None, {"frames": T, "model": {"depth": 2}, "train": {"epochs": 2}})
    with pytest.raises(CheckpointFormatError, match="another model config"):
        fit(other, build_fusion_net(other), data, None, tmp_path / "r", kind="fusion", fingerprint=None,
            trainable=trainable_predicate(FUSION_PREFIXES), device=torch.device("cpu"), progress=False)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    data = RandomClips(2, 4)
    cfg = _cfg(epochs=1)
    fit(cfg, build_fusion_net(cfg), data, None, tmp_path / "r", kind="fusion", fingerprint=None,
        trainable=trainable_predicate(FUSION_PREFIXES), device=torch.device("cpu"), progress=False)
    p = tmp_path / "r" / "last.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="damaged"):
        read_checkpoint(p)


def test_rerunning_a_run_that_reached_max_steps_trains_no_further_step(tmp_path):
    """The same command again on a finished max_steps run used to train one more step (2 -> 3)."""
    data = RandomClips(6, 5)
    cfg = _cfg(epochs=3, max_steps=2)
    kw = {"kind": "fusion", "fingerprint": None, "trainable": trainable_predicate(FUSION_PREFIXES),
          "device": torch.device("cpu"), "progress": False}
    assert fit(cfg, build_fusion_net(cfg), data, None, tmp_path / "r", **kw)["steps"] == 2
    before = read_checkpoint(tmp_path / "r" / "last.pt")["weights"]
    assert fit(cfg, build_fusion_net(cfg), data, None, tmp_path / "r", **kw)["steps"] == 2
    after = read_checkpoint(tmp_path / "r" / "last.pt")["weights"]
    assert all(torch.equal(before[k], after[k]) for k in before)
