"""Regression tests: every stage knows and checks the encoders behind its inputs; options do what they say.

Each test names the failure it guards against (all of them happened with the code before this file).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stbava.cache import CacheError, open_cache
from stbava.checkpoint import read_checkpoint, save_checkpoint
from stbava.cli import main
from stbava.config import ConfigError, EncoderConfig, config_from_dict, load_config
from stbava.data.clips import load_clips
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.core.net import build_adapter_net
from stbava.pipeline.core.restore import load_model, restore_net
from stbava.pipeline.evaluate.loop import evaluate_net, make_eval_dataset, run_eval
from stbava.pipeline.extract import features
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.stage2 import train_fusion
from stbava.pipeline.train.stage3 import finetune_adapters
from stbava.state_dict import CheckpointError
from stbava.testing import write_fake_sam_checkpoint

TRAIN = {"model": {"depth": 1}, "train": {"epochs": 1, "batch_size": 2, "max_steps": 2}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prov")
    data = write_synthetic(root / "data", "ms3", {"train": 2, "val": 1, "test": 2}, seed=3)
    cache = root / "c.zarr"
    run_extraction(data, "ms3", cache, "zarr", EncoderConfig(), batch_size=2, device="cpu", progress=False)
    run = root / "run"
    train_fusion(load_config(None, TRAIN), cache, data, run, device="cpu", progress=False)
    return {"root": root, "data": data, "cache": cache, "run": run}


def test_resume_with_other_attention_numerics_is_refused(setup, tmp_path):
    """Resuming extract-features with --no-sdpa silently mixed two attention kernels in one cache."""
    cache = tmp_path / "c.zarr"
    run_extraction(setup["data"], "ms3", cache, "zarr", splits=["test"], device="cpu", progress=False)
    with pytest.raises(CacheError, match=r"numerics\.sdpa"):
        run_extraction(setup["data"], "ms3", cache, "zarr", splits=["val"], device="cpu", progress=False, sdpa=False)


def test_a_missing_sam_file_of_the_cache_is_an_error_not_a_random_decoder(setup, tmp_path):
    """`make train-fusion` dropped --sam-checkpoint when the file was missing: a random decoder, no word."""
    sam = write_fake_sam_checkpoint(tmp_path / "w" / "sam_tiny.pth", "tiny", seed=1)
    cache = tmp_path / "c.zarr"
    run_extraction(setup["data"], "ms3", cache, "zarr", EncoderConfig(sam_checkpoint=str(sam)), device="cpu",
                   progress=False)
    sam.rename(tmp_path / "gone.pth")
    with pytest.raises(CheckpointError, match=r"sha256 [0-9a-f]{64}.*sam_tiny\.pth"):
        train_fusion(load_config(None, TRAIN), cache, setup["data"], tmp_path / "r", device="cpu", progress=False)


def test_a_config_that_contradicts_the_cache_is_an_error(setup, tmp_path):
    """configs/ms3.yaml said encoder vit_h and the cache's tiny encoder silently replaced it."""
    cfg = load_config(None, {**TRAIN, "encoder": {"name": "vit_b"}})
    with pytest.raises(ConfigError, match="encoder.name: config 'vit_b', cache 'tiny'"):
        train_fusion(cfg, setup["cache"], setup["data"], tmp_path / "r", device="cpu", progress=False)


def test_removed_fields_are_refused_in_yaml_and_dropped_from_old_checkpoints(setup, tmp_path):
    """model.mask_size (only 224 worked) and model.adapters (never read) did nothing."""
    for field in ("mask_size: 224", "adapters: true"):
        p = tmp_path / "c.yaml"
        p.write_text(f"model:\n  {field}\n")
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(p)
    payload = torch.load(setup["run"] / "best.pt", weights_only=True)
    payload["config"]["model"].update(mask_size=224, adapters=False)  # as older versions wrote it
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    net, cfg = restore_net(read_checkpoint(old))
    assert cfg.model.depth == 1 and net.model.mask_size == 224


def test_stage_three_refuses_what_it_cannot_change(setup, tmp_path):
    """finetune-adapters --subset was said to be checked but overrode; --depth failed only at weight load."""
    with pytest.raises(ConfigError, match="subset: 's4'"):
        finetune_adapters(setup["run"], setup["data"], tmp_path / "a", {"subset": "s4"}, device="cpu")
    with pytest.raises(ConfigError, match=r"model\.depth: 3 \(--init has 1\)"):
        finetune_adapters(setup["run"], setup["data"], tmp_path / "a", {"model": {"depth": 3}}, device="cpu")
    res = CliRunner().invoke(main, ["finetune-adapters", "--data-root", str(setup["data"]), "--init",
                                    str(setup["run"]), "--run-dir", str(tmp_path / "a"), "--config", "nope.yaml"])
    assert res.exit_code == 2 and "nope.yaml" in res.output and "Traceback" not in res.output


def test_adapter_weights_must_be_in_an_adapter_checkpoint(setup, tmp_path):
    """Restoring used prefix="" (no missing-key check): a file without prompt_generator.* gave zero adapters."""
    init = read_checkpoint(setup["run"] / "best.pt")
    cfg = config_from_dict(init["config"], saved=True)
    net = build_adapter_net(cfg, init)
    weights = {k: v for k, v in net.state_dict().items() if k.startswith("model.mask_decoder.")}
    path = tmp_path / "adapters.pt"
    save_checkpoint(path, kind="adapters", cfg=cfg, weights=weights, fingerprint=init["fingerprint"],
                    extra={"init_checkpoint": str(init["path"]), "init_digest": _sha(init["path"])})
    with pytest.raises(CheckpointError, match="missing keys.*prompt_generator"):
        restore_net(read_checkpoint(path))


def _sha(path) -> str:
    from stbava.digest import file_sha256

    return file_sha256(path)


def test_moved_run_folders_still_evaluate(setup, tmp_path):
    """A stage-three checkpoint stored the stage-two path as typed: eval after moving the runs failed."""
    runs = tmp_path / "runs"
    shutil.copytree(setup["run"], runs / "stage2")
    finetune_adapters(runs / "stage2", setup["data"], runs / "stage3", {"train": {"max_steps": 1, "batch_size": 1}},
                      device="cpu", progress=False)
    moved = tmp_path / "moved"
    shutil.move(str(runs), str(moved))
    result, rep = run_eval(moved / "stage3" / "best.pt", setup["data"], "test", None, device="cpu", progress=False)
    assert rep["checkpoint_kind"] == "adapters" and result.n_clips == 2


def test_eval_scores_float32_logits_whatever_the_training_autocast(setup, tmp_path):
    """eval used train.amp ("auto" = bf16 on CUDA): the "exact" metrics came from bf16 logits."""
    payload = torch.load(setup["run"] / "best.pt", weights_only=True)
    payload["config"]["train"]["amp"] = "bf16"  # on CPU, bf16 autocast runs only when asked for explicitly
    ckpt = tmp_path / "bf16.pt"
    torch.save(payload, ckpt)
    result, _ = run_eval(ckpt, setup["data"], "test", None, cache=setup["cache"], device="cpu", progress=False)
    p = read_checkpoint(ckpt)
    net, cfg = restore_net(p)
    ds, _ = make_eval_dataset(p, cfg, load_clips(setup["data"], "ms3", ["test"]), setup["cache"])
    fp32 = evaluate_net(net, ds, torch.device("cpu"), amp="off", progress=False)
    bf16 = evaluate_net(net, ds, torch.device("cpu"), amp="bf16", progress=False)
    assert result.per_clip == fp32.per_clip
    assert bf16.per_clip != fp32.per_clip  # the check can fail: bf16 logits do change the per-clip values


def test_loading_a_model_leaves_the_callers_random_stream_alone(setup):
    """load_model / eval / predict reseeded the caller's global torch RNG (model init seeds it)."""
    torch.manual_seed(11)
    want = torch.rand(4)
    torch.manual_seed(11)
    load_model(setup["run"] / "best.pt")
    assert torch.equal(torch.rand(4), want)


def test_a_programming_error_in_a_read_is_not_reported_as_damage(setup, monkeypatch):
    """`except Exception` in the reader turned any bug into "damaged chunk" (and --verify then re-extracted)."""
    reader = open_cache(setup["cache"])
    store = reader._store()

    def buggy(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(store, "read", buggy)
    cid = reader.clip_ids("test")[0]
    with pytest.raises(TypeError, match="a bug"):
        reader.image_embeddings(cid)


def test_extraction_forwards_at_most_frames_per_forward_frames_whatever_the_batch_size(tmp_path, monkeypatch):
    """--batch-size 4 pushed 20 frames through one forward: vit_b was killed for memory on a 24 GiB machine.

    What bounds extraction's memory is the largest image-encoder forward, so count its frames directly (the RSS
    of the tiny encoder's activations is too small to tell apart from noise: 33 MiB for 40 frames); the
    embeddings must not depend on how the frames were grouped.
    """
    data = write_synthetic(tmp_path / "d", "ms3", {"train": 4, "val": 0, "test": 0}, seed=1)
    real_build, forwards = features.build_frozen_encoders, []

    def counting_build(*a, **k):
        image, vggish = real_build(*a, **k)
        image.register_forward_pre_hook(lambda _m, args: forwards.append(args[0].shape[0]))
        return image, vggish

    monkeypatch.setattr(features, "build_frozen_encoders", counting_build)
    caches = {}
    for batch in (1, 4):
        forwards.clear()
        caches[batch] = tmp_path / f"c{batch}.zarr"
        run_extraction(data, "ms3", caches[batch], "zarr", EncoderConfig(), batch_size=batch, device="cpu",
                       progress=False, frames_per_forward=2, num_workers=0)
        assert sum(forwards) == 20 and max(forwards) == 2, (batch, forwards)  # 4 clips x 5 frames, 2 at a time
    a, b = open_cache(caches[1]), open_cache(caches[4])
    assert a.fingerprint == b.fingerprint
    for cid in a.clip_ids("train"):
        np.testing.assert_allclose(a.image_embeddings(cid).astype(np.float32),
                                   b.image_embeddings(cid).astype(np.float32), atol=2e-3, rtol=2e-3)
