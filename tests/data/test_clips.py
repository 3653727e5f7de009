"""Clip index (REFERENCE §1): CSV read by position, 1-based frames, MS3 '.mp4_' names, S4 train frame-1 mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from stbava.data.clips import DataError, load_clips, read_metadata, resolve_subset_root


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def s4_root(tmp_path):
    # header names are deliberately not the documented ones: columns are read by position
    _write(tmp_path / "Single-source" / "s4_meta_data.csv",
           "vid,begin,cls,part,extra\n"
           "abc_1000,1,dog_barking,train,x\n"
           "\n"
           "xyz_2000,0,playing_piano,val,y\n"
           "qqq_0,3,dog_barking,test,z\n")
    return tmp_path


@pytest.fixture
def ms3_root(tmp_path):
    _write(tmp_path / "Multi-sources" / "ms3_meta_data.csv", "a,b\nm1,train\nm2,test\nm3,val\n")
    return tmp_path


def test_s4_paths_are_1_based_and_train_has_one_mask(s4_root):
    clips = load_clips(s4_root, "s4")
    assert [(c.id, c.split, c.category) for c in clips] == [
        ("abc_1000", "train", "dog_barking"), ("xyz_2000", "val", "playing_piano"), ("qqq_0", "test", "dog_barking")]
    d = s4_root / "Single-source" / "s4_data"
    tr, va = clips[0], clips[1]
    assert tr.frame_paths == tuple(d / "visual_frames/train/dog_barking/abc_1000" / f"abc_1000_{k}.png"
                                   for k in range(1, 6))
    assert tr.wav_path == d / "audio_wav/train/dog_barking/abc_1000.wav"
    assert tr.mask_paths == (d / "gt_masks/train/dog_barking/abc_1000/abc_1000_1.png",)
    assert tr.mask_frames == (0,)
    assert va.mask_paths == tuple(d / "gt_masks/val/playing_piano/xyz_2000" / f"xyz_2000_{k}.png" for k in range(1, 6))
    assert va.mask_frames == (0, 1, 2, 3, 4) and va.num_frames == 5
    assert len(va.all_paths()) == 11


def test_ms3_frames_have_mp4_infix_and_no_split_dir(ms3_root):
    clips = load_clips(ms3_root, "ms3")
    assert [(c.id, c.split, c.category) for c in clips] == [("m1", "train", None), ("m2", "test", None),
                                                             ("m3", "val", None)]
    d = ms3_root / "Multi-sources" / "ms3_data"
    c = clips[0]
    assert c.frame_paths[0] == d / "visual_frames" / "m1" / "m1.mp4_1.png"
    assert c.frame_paths[4] == d / "visual_frames" / "m1" / "m1.mp4_5.png"
    assert c.wav_path == d / "audio_wav" / "train" / "m1.wav"
    assert c.mask_paths == tuple(d / "gt_masks" / "train" / "m1" / f"m1_{k}.png" for k in range(1, 6))
    assert c.mask_frames == (0, 1, 2, 3, 4)  # MS3 train is fully annotated


def test_root_may_be_subset_folder_or_parent_and_splits_filter(ms3_root):
    sub = ms3_root / "Multi-sources"
    assert resolve_subset_root(ms3_root, "ms3") == sub == resolve_subset_root(sub, "ms3")
    assert [c.id for c in load_clips(sub, "ms3", splits=["val", "test"])] == ["m2", "m3"]
    assert [c.num_frames for c in load_clips(sub, "ms3", frames=3)] == [3, 3, 3]
    with pytest.raises(DataError, match="unknown split"):
        load_clips(sub, "ms3", splits=["dev"])


def test_metadata_errors(tmp_path):
    with pytest.raises(DataError, match="stbava synth"):
        load_clips(tmp_path, "s4")
    with pytest.raises(DataError, match="unknown subset"):
        load_clips(tmp_path, "avsx")
    csv = tmp_path / "Multi-sources" / "ms3_meta_data.csv"
    _write(csv, "")
    with pytest.raises(DataError, match="empty metadata"):
        read_metadata(tmp_path, "ms3")
    _write(csv, "a,b\nm1,train\nm1,val\n")
    with pytest.raises(DataError, match="duplicate clip id 'm1'"):
        read_metadata(tmp_path, "ms3")
    _write(csv, "a,b\nm1,training\n")
    with pytest.raises(DataError, match="unknown split 'training'"):
        read_metadata(tmp_path, "ms3")
    _write(tmp_path / "Single-source" / "s4_meta_data.csv", "a,b,c\nv,0,cat\n")
    with pytest.raises(DataError, match="expected at least 4 columns"):
        read_metadata(tmp_path, "s4")
