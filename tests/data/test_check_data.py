"""check_data / `stbava check-data`: every missing or unreadable file is listed, with counts per split."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from stbava.cli import main
from stbava.data.check import check_data
from stbava.data.clips import load_clips
from stbava.data.synthetic import write_synthetic


def test_clean_synthetic_tree_is_ok(tmp_path):
    root = write_synthetic(tmp_path, "s4", clips_per_split=2, seed=0)
    report = check_data(tmp_path, "s4", progress=False)  # parent folder works too
    assert report.ok and report.problems == []
    assert report.root == root
    assert {s: (c.clips, c.bad_clips) for s, c in report.splits.items()} == {
        "train": (2, 0), "val": (2, 0), "test": (2, 0)}
    # S4: train clips 5 frames + wav + 1 mask, val/test 5 frames + wav + 5 masks
    assert report.files_checked == 2 * 7 + 4 * 11
    assert report.lines()[-1] == "OK"


def test_every_problem_is_listed(tmp_path):
    root = write_synthetic(tmp_path, "ms3", clips_per_split=2, seed=0)
    clips = {c.id: c for c in load_clips(root, "ms3")}
    tr0, tr1, va0, te1 = clips["syn_train_0000"], clips["syn_train_0001"], clips["syn_val_0000"], clips["syn_test_0001"]
    tr0.frame_paths[2].unlink()  # missing frame
    tr0.mask_paths[4].unlink()  # missing mask (same clip)
    data = tr1.frame_paths[0].read_bytes()
    tr1.frame_paths[0].write_bytes(data[: len(data) // 3])  # truncated PNG
    va0.wav_path.write_bytes(b"")  # zero-byte wav
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(te1.mask_paths[1])  # wrong mask size
    report = check_data(root, "ms3", workers=2, progress=False)
    assert not report.ok
    got = {p: msg for p, msg in report.problems}
    assert set(got) == {tr0.frame_paths[2], tr0.mask_paths[4], tr1.frame_paths[0], va0.wav_path, te1.mask_paths[1]}
    assert got[tr0.frame_paths[2]] == "missing" and got[tr0.mask_paths[4]] == "missing"
    assert got[tr1.frame_paths[0]].startswith("unreadable video frame")
    assert "zero-byte" in got[va0.wav_path]
    assert "expected 224x224" in got[te1.mask_paths[1]]
    assert {s: (c.clips, c.bad_clips) for s, c in report.splits.items()} == {
        "train": (2, 2), "val": (2, 1), "test": (2, 1)}
    assert report.bad_clips == 4
    # problems are in CSV order (train before val before test)
    assert [p for p, _ in report.problems][-1] == te1.mask_paths[1]


def test_cli_check_data_exit_codes(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["synth", str(tmp_path), "--subset", "ms3", "--clips-per-split", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    root = tmp_path / "Multi-sources"
    assert (root / "ms3_meta_data.csv").is_file()
    res = runner.invoke(main, ["check-data", "--data-root", str(root), "--subset", "ms3"])
    assert res.exit_code == 0, res.output
    assert "train: 1 clips, 0 with problems" in res.output and "OK" in res.output
    wav = load_clips(root, "ms3", splits=["test"])[0].wav_path
    wav.write_bytes(b"RIFF....garbage" * 4)
    res = runner.invoke(main, ["check-data", "--data-root", str(root), "--subset", "ms3"])
    assert res.exit_code == 1
    assert str(wav) in res.output and "unreadable audio" in res.output
    assert "test : 1 clips, 1 with problems" in res.output
    res = runner.invoke(main, ["check-data", "--data-root", str(tmp_path / "nowhere"), "--subset", "s4"])
    assert res.exit_code == 1 and "s4_meta_data.csv" in res.output and "Traceback" not in res.output
