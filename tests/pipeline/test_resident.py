"""train.gpu_resident: the whole train split held on the device gives the same batches and losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stbava.checkpoint import read_checkpoint
from stbava.config import ConfigError, EncoderConfig, load_config
from stbava.data.clips import load_clips
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.core.sources import CachedClips, collate
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.resident import ResidentClips
from stbava.pipeline.train.stage2 import train_fusion

T = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("syn"), "ms3", {"train": 4, "val": 1}, seed=3, frames=T)
    cache = tmp_path_factory.mktemp("cache") / "ms3.zarr"
    run_extraction(root, "ms3", cache, "zarr", EncoderConfig(), batch_size=4, device="cpu", frames=T,
                   progress=False)
    return root, cache


def test_resident_batches_equal_the_loader_batches(data):
    root, cache = data
    ds = CachedClips(cache, load_clips(root, "ms3", ["train"], frames=T), T)
    res = ResidentClips(ds, "cpu")
    assert len(res) == 4 and res.masks.dtype == torch.bool
    assert res.nbytes >= 4 * T * 256 * 16 * 16 * 2
    for idx in ([3, 0], [2, 1, 3], [-1 - 2]):
        got = res.batch(idx)
        want = collate([ds[i if i >= 0 else -1 - i] for i in idx])
        if idx[0] < 0:  # DDP padding: the clip with no annotated frame
            want.mask_valid[:] = False
        assert got.clip_ids == want.clip_ids
        for name in ("image_embeddings", "audio_embeddings", "masks", "mask_valid"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), name
    item = res[2]
    assert item["clip_id"] == ds[2]["clip_id"] and torch.equal(item["masks"], ds[2]["masks"])
    ids = [b.clip_ids for b in res.batches([[1], [0, 3]])]
    assert ids == [[ds[1]["clip_id"]], [ds[0]["clip_id"], ds[3]["clip_id"]]]


def test_soft_masks_are_kept_as_floats():
    class Soft(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"clip_id": f"c{i}", "image_embeddings": torch.zeros(T, 4), "audio_embeddings": torch.zeros(T, 2),
                    "masks": torch.full((T, 3, 3), 0.5 * i), "mask_valid": torch.ones(T, dtype=torch.bool)}

    res = ResidentClips(Soft(), "cpu")
    assert torch.equal(res.batch([1, 0]).masks[:, 0, 0, 0], torch.tensor([0.5, 0.0]))


def test_refuses_data_that_does_not_fit(data):
    root, cache = data
    ds = CachedClips(cache, load_clips(root, "ms3", ["train"], frames=T), T)
    with pytest.raises(ConfigError, match="gpu_resident: false"):
        ResidentClips(ds, "cpu", headroom=1e-12)


def _losses(run_dir) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "step"]


def test_train_fusion_resident_gives_the_same_losses_and_weights(data, tmp_path):
    root, cache = data
    base = {"frames": T, "model": {"depth": 1}, "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "seed": 5}}
    out = {}
    for resident in (False, True):
        cfg = load_config(None, {**base, "train": {**base["train"], "gpu_resident": resident}})
        run = tmp_path / f"run_{resident}"
        train_fusion(cfg, cache, root, run, device="cpu", progress=False)
        out[resident] = (_losses(run), read_checkpoint(run / "last.pt"))
    assert len(out[True][0]) == 2  # 2 batches x 1 epoch
    np.testing.assert_array_equal(out[True][0], out[False][0])
    w0, w1 = out[False][1]["weights"], out[True][1]["weights"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
