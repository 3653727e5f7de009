"""SIGKILL at several points: a re-run finishes with exactly the uninterrupted result, and nothing is torn.

Extraction: the cache is polled while a real ``stbava extract-features`` child writes it; the child is killed
while the store is being created, after 1 clip and after 3 clips (HDF5: after 2), and every time each clip that
reads as done must already equal the reference array for array. Training: a real ``stbava train-fusion`` child saving
``last.pt`` every step is killed in the middle of epoch 1 (just as it saves step 2); resuming runs through
the epoch boundary and ends with the same weights and optimiser state as a straight run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from relhelpers import (
    assert_done_clips_equal,
    cli,
    done_count,
    extract_args,
    kill_when,
    leftovers,
    run,
    start,
    train_args,
)

from stbava.cache import open_cache


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_killed_extraction_resumes_to_the_uninterrupted_cache(backend, dataset, ref_cache, tmp_path):
    cache = tmp_path / ("c.zarr" if backend == "zarr" else "c.h5")
    lock = cache.with_name(cache.name + ".lock")
    args = extract_args(dataset.root, cache, "--backend", backend)
    points = [("lock taken, store being created", lock.exists), ("1 clip done", lambda: done_count(cache) >= 1),
              ("3 clips done", lambda: done_count(cache) >= 3)]
    if backend == "hdf5":  # the same store logic; one kill in the middle of the writes is enough here
        points = [("2 clips done", lambda: done_count(cache) >= 2)]
    for label, ready in points:
        proc = start(*args)
        assert kill_when(proc, ready), f"extraction ended before the kill point '{label}'"
        assert lock.exists()  # SIGKILL gives no chance to clean up: the file stays, the OS dropped the lock
        if cache.exists():
            assert_done_clips_equal(cache, ref_cache)  # never a done flag over partial data

    if backend == "zarr":  # what a kill inside zarr's or our atomic write leaves behind (if it landed there)
        (cache / "train" / "image" / "c" / "0.0123456789abcdef.partial").write_bytes(b"half a chunk")
        (cache / ".stbava_manifest.json.x1y2.tmp").write_text("{")
    final = run(*args)
    assert final.returncode == 0, final.stderr  # takes the lock at once: nothing stale to detect or break
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert open_cache(cache).manifest.splits == open_cache(ref_cache).manifest.splits
    assert not lock.exists()
    assert not leftovers(tmp_path), leftovers(tmp_path)


def last_step(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(ln)["step"] for ln in lines if '"kind": "step"' in ln), default=0)


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Weights and Adam state of a checkpoint, flattened to name -> tensor."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"w.{k}": v for k, v in payload["weights"].items()}
    for pid, st in payload["state"]["optimizer"]["state"].items():
        out.update({f"adam.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_killed_training_resumes_to_the_same_weights(dataset, ref_cache, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = cli(*train_args(ref_cache, dataset.root, straight))  # in-process, with the same thread count
    assert done.exit_code == 0, done.output

    kill_args = train_args(ref_cache, dataset.root, killed)
    proc = start(*kill_args)  # 3 steps per epoch: kill in the middle of epoch 1 (while saving step 2)
    assert kill_when(proc, lambda: last_step(killed) >= 2), "training ended before step 2"
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "epo')  # as if the kill had landed in the middle of a metrics line
    (killed / ".last.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")  # a save cut short
    resumed = run(*kill_args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    a, b = checkpoint_tensors(straight / "last.pt"), checkpoint_tensors(killed / "last.pt")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill + resume"
    # the metrics log is cut back to the resumed step, so it reads like the straight run's
    losses = [[(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "step"] for d in (straight, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert not leftovers(killed), leftovers(killed)
