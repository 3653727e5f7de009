"""torchrun with 2 gloo ranks on CPU gives what one process gives: sharded extraction (zarr, HDF5 + resume),
DDP training (stage two with a resume, stage three), and evaluation (exactly).

Every multi-rank run goes through the real launcher and CLI (``python -m torch.distributed.run
--standalone --nproc-per-node 2 -m stbava ...``). One-process references run in this process with one
torch thread, as each torchrun worker has (OMP_NUM_THREADS=1), so their float results are comparable bit
for bit where the computation is the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stbava.cache import CacheError, create_cache, join_cache, merge_parts, open_cache
from stbava.cache.shards import part_path
from stbava.checkpoint import read_checkpoint, save_checkpoint
from stbava.config import EncoderConfig, load_config
from stbava.data.clips import load_clips
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.core.distributed import DistInfo
from stbava.pipeline.core.net import build_fusion_net
from stbava.pipeline.evaluate.loop import run_eval
from stbava.pipeline.extract import features as extract
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.batches import ZeroWeightPadding, epoch_batches
from stbava.pipeline.train.loop import saved_weights
from stbava.pipeline.train.stage2 import FUSION_PREFIXES, config_for_cache, initial_fusion_net, train_fusion
from stbava.pipeline.train.stage3 import finetune_adapters

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
FRAMES = 2


def torchrun(*args: str, cwd: Path) -> str:
    """Run ``stbava ARGS`` on 2 local ranks; returns the combined output (asserting success)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "stbava",
           *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@contextlib.contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 3 clips per split: with global batch 2 the last training batch holds one clip, so rank 1 gets none;
    # 2 frames per clip (not AVSBench's 5): the same code paths at less than half the compute
    return write_synthetic(tmp_path_factory.mktemp("syn"), "ms3", clips_per_split=3, seed=11, frames=FRAMES)


@pytest.fixture(scope="module")
def single_caches(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    with one_thread():
        for backend, suffix in SUFFIX.items():
            run_extraction(data_root, "ms3", out / f"c{suffix}", backend, EncoderConfig(), batch_size=2,
                           device="cpu", store_log_mel=True, progress=False, frames=FRAMES)
    return out


def assert_same_cache(a_path: Path, b_path: Path) -> None:
    a, b = open_cache(a_path), open_cache(b_path)
    assert a.manifest.to_dict() == b.manifest.to_dict()  # backend, codec, fingerprint, rows, info
    for split in a.splits():
        assert a.clip_ids(split) == b.clip_ids(split) == a.manifest.splits[split]  # all done, same rows
        for cid in a.clip_ids(split):
            for get in ("image_embeddings", "audio_embeddings", "log_mels"):
                x, y = getattr(a, get)(cid), getattr(b, get)(cid)
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y, err_msg=f"{get} of {cid}")


def extract_args(data_root: Path, cache: Path, backend: str) -> list[str]:
    return ["extract-features", "--data-root", str(data_root), "--subset", "ms3", "--cache", str(cache), "--backend",
            backend, "--batch-size", "2", "--device", "cpu", "--store-log-mel", "--num-workers", "0", "--no-progress",
            "--frames", str(FRAMES)]


def test_sharded_extraction_equals_one_process_zarr(data_root, single_caches, tmp_path):
    cache = tmp_path / "c.zarr"
    out = torchrun(*extract_args(data_root, cache, "zarr"), cwd=tmp_path)
    assert out.count("9 clips, wrote 9, 0 already done") == 1  # totals of both ranks, printed once
    assert sorted(os.listdir(tmp_path)) == [cache.name]  # the lock is gone
    assert_same_cache(single_caches / cache.name, cache)


def test_sharded_extraction_resumes_a_killed_run_hdf5(data_root, single_caches, tmp_path, monkeypatch):
    cache = tmp_path / "c.h5"
    real, calls = extract.encode_batch, []

    def die_in_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extract, "encode_batch", die_in_second_batch)
    with one_thread(), pytest.raises(KeyboardInterrupt):
        run_extraction(data_root, "ms3", cache, "hdf5", EncoderConfig(), batch_size=2, device="cpu",
                       store_log_mel=True, progress=False, frames=FRAMES)
    # the remaining 7 clips go to 2 ranks; rank 1 writes a part file that rank 0 merges at the end
    out = torchrun(*extract_args(data_root, cache, "hdf5"), cwd=tmp_path)
    assert out.count("9 clips, wrote 7, 2 already done") == 1 and "merged 3 clips" in out
    assert sorted(os.listdir(tmp_path)) == [cache.name]  # no lock, no part file left
    assert_same_cache(single_caches / cache.name, cache)


FP = {"image": {"encoder": "tiny"}, "frames": 2}
CLIPS = [("a", "train"), ("b", "train"), ("c", "val")]
LAYOUT = {"fingerprint": FP, "frames": 2, "emb_shape": (256, 2, 2)}


def clip_arrays(cid: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ord(cid))
    return rng.standard_normal((2, 256, 2, 2)).astype(np.float16), rng.standard_normal((2, 128)).astype(np.float32)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_job_lock_admits_its_ranks_only_and_parts_merge(tmp_path, backend):
    path = tmp_path / f"c{SUFFIX[backend]}"
    main = create_cache(path, backend, clips=CLIPS, job="job1", **LAYOUT)
    manifest = main.manifest.to_dict()
    with pytest.raises(CacheError, match=r"being written by pid \d+ on .* \(torchrun job job1\)"):
        create_cache(path, backend, clips=CLIPS, **LAYOUT)  # an unrelated process is still refused
    with pytest.raises(CacheError, match="not held by this torchrun job"):
        join_cache(path, backend, job="job2", rank=1, manifest=manifest, clips=CLIPS[2:], **LAYOUT)
    with pytest.raises(CacheError, match="encoder"):
        join_cache(path, backend, job="job1", rank=1, manifest=manifest, clips=CLIPS[2:],
                   **{**LAYOUT, "fingerprint": {**FP, "frames": 3}})
    rank1 = join_cache(path, backend, job="job1", rank=1, manifest=manifest, clips=CLIPS[2:], **LAYOUT)
    main.write_clip("a", *clip_arrays("a"))
    rank1.write_clip("c", *clip_arrays("c"))
    rank1.close()
    assert part_path(path, 1).exists() == (backend == "hdf5")  # HDF5: rank 1 wrote its own part file
    assert path.with_name(path.name + ".lock").exists()  # a joined rank never releases the job's lock
    assert merge_parts(main) == (1 if backend == "hdf5" else 0)
    main.close()
    r = open_cache(path)
    assert r.clip_ids("train") == ["a"] and r.clip_ids("val") == ["c"]
    np.testing.assert_array_equal(r.image_embeddings("c"), clip_arrays("c")[0])
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_parts_left_by_a_killed_job_are_merged_on_resume(tmp_path):
    path = tmp_path / "c.h5"
    main = create_cache(path, "hdf5", clips=CLIPS, job="job1", **LAYOUT)
    rank1 = join_cache(path, "hdf5", job="job1", rank=1, manifest=main.manifest.to_dict(), clips=CLIPS[1:],
                       **LAYOUT)
    rank1.write_clip("b", *clip_arrays("b"))  # "c" was never finished
    rank1.close()
    main.close()  # the job died before merging
    with create_cache(path, "hdf5", clips=CLIPS, **LAYOUT) as w:  # any later run, here a single process
        assert [c for c, _ in CLIPS if w.is_done(c)] == ["b"]
    assert not part_path(path, 1).exists()
    np.testing.assert_array_equal(open_cache(path).audio_embeddings("b"), clip_arrays("b")[1])


def test_a_rank_without_clips_in_the_last_batch_gets_a_zero_weight_clip():
    shares = [epoch_batches(5, 2, seed=3, epoch=0, dist=DistInfo(rank=r, world=2)) for r in (0, 1)]
    full = epoch_batches(5, 2, seed=3, epoch=0, dist=DistInfo())
    assert [a + b for a, b in zip(shares[0][:2], shares[1][:2])] == full[:2]
    assert shares[0][2] == full[2] and shares[1][2] == [-1 - full[2][0]]
    ds = ZeroWeightPadding([{"clip_id": "x", "mask_valid": torch.ones(3, dtype=torch.bool)}])
    assert ds[0]["mask_valid"].all() and not ds[-1]["mask_valid"].any() and len(ds) == 1


# Stage two on the zarr cache: global batch 2 over 3 train clips -> 2 steps per epoch, the second with one clip
# (rank 1 then runs a zero-weight clip); attention dropout off so both runs compute the same function.
TRAIN = {"subset": "ms3", "model": {"depth": 1, "attn_dropout": 0.0},
         "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "seed": 5, "amp": "off", "save_every_steps": 1}}
TRAIN_ARGS = ["--subset", "ms3", "--depth", "1", "--epochs", "2", "--batch-size", "2", "--lr", "1e-3", "--seed", "5",
              "--set", "model.attn_dropout=0", "--set", "train.amp='off'", "--set", "train.save_every_steps=1",
              "--device", "cpu"]


def assert_same_update(ddp: dict, one: dict, init: dict) -> None:
    """Same training within float noise: Adam turns rounding differences of near-zero gradients into a few
    larger outliers, so bound the L2 norm of the difference relative to the update, and each value by a
    fraction of one Adam step (lr 1e-3). Measured: 1.5e-5 relative, 2.6e-5 largest (stage two)."""
    assert ddp.keys() == one.keys()
    same = [k for k in one if k in init]
    diff = sum(float(((ddp[k] - one[k]).double() ** 2).sum()) for k in one) ** 0.5
    moved = sum(float(((one[k] - init[k]).double() ** 2).sum()) for k in same) ** 0.5
    worst = max(float((ddp[k] - one[k]).abs().max()) for k in one)
    assert moved > 0.1 and diff / moved < 1e-3 and worst < 3e-4, (moved, diff, worst)


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def ddp_run(data_root, single_caches, tmp_path_factory):
    """Two-rank train-fusion stopped after 3 of 4 steps (inside epoch 2), then resumed by a second job."""
    work = tmp_path_factory.mktemp("ddp")
    run = work / "run"
    args = ["train-fusion", "--cache", str(single_caches / "c.zarr"), "--data-root", str(data_root),
            "--run-dir", str(run), *TRAIN_ARGS]
    torchrun(*args, "--max-steps", "3", cwd=work)
    loop = read_checkpoint(run / "last.pt")["state"]["loop"]
    assert (loop["epoch"], loop["batch_in_epoch"], loop["step"]) == (1, 1, 3)
    out = torchrun(*args, cwd=work)
    assert "resumed from" in out and "done: 4 steps" in out
    return run


@pytest.fixture(scope="module")
def single_run(data_root, single_caches, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    with one_thread():
        train_fusion(load_config(None, TRAIN), single_caches / "c.zarr", data_root, run, device="cpu",
                     progress=False)
    return run


def test_two_rank_training_with_resume_equals_one_process(ddp_run, single_run, single_caches, data_root):
    ddp, one = read_checkpoint(ddp_run / "last.pt"), read_checkpoint(single_run / "last.pt")
    assert ddp["state"]["loop"]["step"] == one["state"]["loop"]["step"] == 4
    cfg = config_for_cache(load_config(None, TRAIN), open_cache(single_caches / "c.zarr"))
    train = load_clips(data_root, cfg.subset, ["train"], frames=cfg.frames)
    init = initial_fusion_net(cfg, open_cache(single_caches / "c.zarr"), train).state_dict()
    assert_same_update(ddp["weights"], one["weights"], init)
    steps_ddp, steps_one = records(ddp_run, "step"), records(single_run, "step")
    assert [r["step"] for r in steps_ddp] == [1, 2, 3, 4]  # rank 0 alone logs; resume dropped nothing twice
    np.testing.assert_allclose([r["loss"] for r in steps_ddp], [r["loss"] for r in steps_one], rtol=1e-5)
    for key in ("train_loss", "val_miou", "val_fscore"):  # epoch 2 was resumed half way: still its full mean
        # val metrics threshold logits: weights equal to float noise can flip a few near-zero pixels, so allow
        # a few pixels' worth of IoU (measured: 3e-6 on one epoch's val mIoU)
        np.testing.assert_allclose([r[key] for r in records(ddp_run, "epoch")],
                                   [r[key] for r in records(single_run, "epoch")], rtol=1e-5, atol=1e-4)
    assert sorted(p.name for p in ddp_run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]


def test_two_rank_adapter_finetuning_equals_one_process(ddp_run, data_root, tmp_path):
    # stage three from the stage-two run: live tiny encoder + adapters; step 2 again leaves rank 1 without a clip
    args = ["finetune-adapters", "--data-root", str(data_root), "--init", str(ddp_run / "last.pt"), "--epochs", "1",
            "--batch-size", "2", "--lr", "1e-3", "--set", "train.amp='off'", "--device", "cpu"]
    torchrun(*args, "--run-dir", str(tmp_path / "ddp"), cwd=tmp_path)
    with one_thread():
        finetune_adapters(ddp_run / "last.pt", data_root, tmp_path / "one",
                          {"train": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "amp": "off"}}, device="cpu",
                          progress=False)
    ddp, one = read_checkpoint(tmp_path / "ddp" / "last.pt"), read_checkpoint(tmp_path / "one" / "last.pt")
    assert ddp["state"]["loop"]["step"] == one["state"]["loop"]["step"] == 2
    adapter = [k for k in one["weights"] if k.endswith("prompt_generator.shared_mlp.weight")]
    assert adapter and float(one["weights"][adapter[0]].abs().max()) > 1e-3  # zero-initialised, now trained
    assert_same_update(ddp["weights"], one["weights"], read_checkpoint(ddp_run / "last.pt")["weights"])
    np.testing.assert_allclose([r["loss"] for r in records(tmp_path / "ddp", "step")],
                               [r["loss"] for r in records(tmp_path / "one", "step")], rtol=1e-5)


def test_distributed_eval_equals_one_process_exactly(data_root, single_caches, tmp_path):
    # an untrained model: its masks are far from empty or full, so IoU and F vary from clip to clip
    cache = single_caches / "c.zarr"
    reader = open_cache(cache)
    cfg = config_for_cache(load_config(None, TRAIN), reader)
    net = build_fusion_net(cfg)
    names = [n for n, _ in net.named_parameters() if n.startswith(FUSION_PREFIXES)]
    save_checkpoint(tmp_path / "init.pt", kind="fusion", cfg=cfg, weights=saved_weights(net, names),
                    fingerprint=reader.fingerprint)
    out = torchrun("eval", "--checkpoint", str(tmp_path / "init.pt"), "--cache", str(cache), "--data-root",
                   str(data_root), "--split", "test", "--out", str(tmp_path / "r.json"), "--batch-size", "2",
                   "--device", "cpu", cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    with one_thread():
        result, _ = run_eval(tmp_path / "init.pt", data_root, "test", None, cache=cache, device="cpu",
                             batch_size=2, progress=False)
    assert report["clips"] == result.n_clips == 3
    assert report["miou"] == result.miou and report["fscore"] == result.fscore  # exact, not approximate
    assert report["per_clip_iou"] == {k: v["iou"] for k, v in result.per_clip.items()}
    assert report["per_clip_fscore"] == {k: v["fscore"] for k, v in result.per_clip.items()}
    assert len(set(report["per_clip_iou"].values())) == 3 and 0.05 < result.miou < 0.95
    assert report["pooled_miou"] == pytest.approx(result.pooled_miou, rel=1e-12)
    assert f"{result.miou:.4f}" in out
