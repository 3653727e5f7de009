"""Checkpoints, manifests, configs and reports are written to a temp file and renamed into place.

A crash in the middle of a save (simulated: the serialiser writes half the bytes, then raises) must keep the
previous file byte-for-byte and leave no temp file behind. A source scan keeps every writer on the helpers.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import torch
from relhelpers import FRAMES, REPO, SUBSET, leftovers

import stbava
import stbava.atomic
from stbava import checkpoint as ckpt
from stbava.atomic import atomic_write_text
from stbava.cache import manifest as cache_manifest
from stbava.cache import open_cache
from stbava.checkpoint import read_checkpoint, save_checkpoint
from stbava.config import load_config
from stbava.pipeline.evaluate import run_eval
from stbava.pipeline.stage2 import train_fusion


def _half_then_crash(real):
    """A ``torch.save`` that gets half way through the file and then dies (disk full, OOM, kill)."""

    def save(obj, f, *a, **k):
        real({"partial": torch.zeros(1000)}, f)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_checkpoint_save_crash_keeps_the_previous_file(tmp_path, monkeypatch):
    cfg = load_config(None, {"model": {"depth": 1}})
    path = tmp_path / "last.pt"
    save_checkpoint(path, kind="fusion", cfg=cfg, weights={"w": torch.ones(3)}, fingerprint=None)
    before = path.read_bytes()
    monkeypatch.setattr(ckpt.torch, "save", _half_then_crash(torch.save))
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, kind="fusion", cfg=cfg, weights={"w": torch.zeros(3)}, fingerprint=None)
    assert path.read_bytes() == before
    assert torch.equal(read_checkpoint(path)["weights"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("writer", ["checkpoint", "cache-manifest"])
def test_text_write_crash_before_rename_keeps_the_previous_file(writer, tmp_path, monkeypatch):
    write = atomic_write_text if writer == "checkpoint" else cache_manifest.write_json_atomic
    import stbava.atomic as mod
    path = tmp_path / "file.json"
    write(path, '{"v": 1}')
    monkeypatch.setattr(mod.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        write(path, '{"v": 2}')
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_training_crash_while_saving_keeps_a_resumable_last_checkpoint(dataset, ref_cache, tmp_path, monkeypatch):
    """The save of step 2 dies half way: last.pt stays the whole step-1 checkpoint, with its resume state."""
    cfg = load_config(None, {"subset": SUBSET, "frames": FRAMES, "model": {"depth": 1},
                             "train": {"epochs": 1, "batch_size": 1, "save_every_steps": 1, "amp": "off"}})
    run_dir = tmp_path / "run"
    real, calls = torch.save, []

    def flaky(obj, f, *a, **k):
        calls.append(obj["state"]["loop"]["step"])
        if len(calls) == 2:
            return _half_then_crash(real)(obj, f)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", flaky)
    with pytest.raises(OSError, match="No space"):
        train_fusion(cfg, ref_cache, dataset.root, run_dir, device="cpu", progress=False)
    assert calls == [1, 2]
    payload = read_checkpoint(run_dir / "last.pt")
    assert payload["state"]["loop"]["step"] == 1 and payload["state"]["optimizer"]["state"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl"]


def test_eval_report_is_replaced_whole(trained_run, dataset, ref_cache, tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    run_eval(trained_run / "best.pt", dataset.root, "test", out, cache=ref_cache, device="cpu", progress=False)
    before = out.read_bytes()
    monkeypatch.setattr(stbava.atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        run_eval(trained_run / "best.pt", dataset.root, "test", out, cache=ref_cache, device="cpu", progress=False)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_successful_runs_leave_no_temp_files(trained_run, ref_cache):
    assert not leftovers(trained_run) and not leftovers(ref_cache)
    assert open_cache(ref_cache).manifest.frames == FRAMES


def test_every_checkpoint_manifest_and_report_writer_goes_through_the_atomic_helpers():
    """No direct torch.save / json.dump / write_text in the package outside the helpers and test utilities."""
    pattern = re.compile(r"torch\.save\(|json\.dump\(|\.write_text\(")
    allowed = {"atomic.py", "checkpoint.py", "testing.py"}  # the atomic helpers themselves; fake checkpoints for tests
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in sorted(Path(stbava.__file__).parent.rglob("*.py")) if path.name not in allowed
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "non-atomic writes:\n" + "\n".join(found)
