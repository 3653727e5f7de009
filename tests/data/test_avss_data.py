"""AVSS data: the published palette, the reader on a generated v1s/v1m/v2 tree, check-data, bad colours."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stbava.cli import main
from stbava.data.avss_labels import read_colour_label, read_label2idx, v2_palette
from stbava.data.check import check_data
from stbava.data.clips import DataError, load_clips
from stbava.data.synthetic import render_clip
from stbava.data.synthetic_avss import AVSS_SYNTH_CLASSES, class_map


def independent_palette(j: int) -> tuple[int, int, int]:
    """REFERENCE §13 read as strings: the bits of j in groups of three (lowest first) fill R, G, B from the top."""
    bits = format(j, "b")[::-1]  # bit 0 first
    rgb = [0, 0, 0]
    for k, b in enumerate(bits):
        if b == "1":
            rgb[k % 3] += 2 ** (7 - k // 3)
    return rgb[0], rgb[1], rgb[2]


def test_palette_all_71_colours():
    pal = v2_palette()
    assert pal.shape == (71, 3) and pal.dtype == np.uint8
    assert [tuple(int(v) for v in pal[j]) for j in range(71)] == [independent_palette(j) for j in range(71)]
    # the well-known PASCAL VOC colours: background, aeroplane, bicycle, ..., person (15)
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[8]) == (64, 0, 0) and tuple(pal[15]) == (192, 128, 128)
    assert len({tuple(c) for c in pal}) == 71


@pytest.fixture(scope="module")
def avss_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("avss")
    r = CliRunner().invoke(main, ["synth", str(out), "--subset", "avss", "--clips-per-split", "3"])
    assert r.exit_code == 0, r.output
    return out / "AVSBench-semantic"


def test_reader_on_generated_tree(avss_tree):
    with (avss_tree / "metadata.csv").open() as f:
        assert next(csv.reader(f)) == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    assert read_label2idx(avss_tree) == list(AVSS_SYNTH_CLASSES)
    clips = {c.id: c for c in load_clips(avss_tree.parent, "avss")}  # the parent folder works too
    assert [(c.split, c.category, c.num_frames, c.mask_frames) for c in clips.values()] == [
        ("train", "v1s", 5, (0,)), ("train", "v1m", 5, tuple(range(5))), ("train", "v2", 10, tuple(range(10))),
        ("val", "v1s", 5, tuple(range(5))), ("val", "v1m", 5, tuple(range(5))), ("val", "v2", 10, tuple(range(10))),
        ("test", "v1s", 5, tuple(range(5))), ("test", "v1m", 5, tuple(range(5))), ("test", "v2", 10, tuple(range(10)))]
    v2 = clips["syn_train_0002"]
    assert v2.frame_paths[9] == avss_tree / "v2" / "syn_train_0002" / "frames" / "9.jpg"
    assert v2.mask_paths[3] == avss_tree / "v2" / "syn_train_0002" / "labels_rgb" / "3.png"
    assert v2.wav_path == avss_tree / "v2" / "syn_train_0002" / "audio.wav"
    assert all(p.is_file() for c in clips.values() for p in c.all_paths())
    assert not (avss_tree / "v1s" / "syn_train_0000" / "labels_rgb" / "1.png").exists()
    # the colour labels read back as the classes of the sounding objects of the clip as drawn
    drawn = render_clip(np.random.default_rng([0, 2, 0, 2]), "ms3", 10, "temporal")
    want = class_map(drawn)
    got = np.stack([read_colour_label(p, num_classes=7) for p in v2.mask_paths])
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 1
    assert [c.id for c in load_clips(avss_tree, "avss", ["val"], avss_parts="v2,v1m")] == [
        "syn_val_0001", "syn_val_0002"]
    with pytest.raises(DataError, match="v3"):
        load_clips(avss_tree, "avss", avss_parts="v3")


def test_label_is_resized_nearest(tmp_path):
    pal = v2_palette()
    big = np.zeros((448, 448, 3), np.uint8)
    big[:224, :224] = pal[70]
    Image.fromarray(big).save(tmp_path / "0.png")
    lab = read_colour_label(tmp_path / "0.png", num_classes=71)
    assert lab.shape == (224, 224) and lab[:112, :112].tolist() == [[70] * 112] * 112 and lab[112:].max() == 0


def test_check_data_and_unknown_colour(avss_tree, tmp_path):
    r = CliRunner().invoke(main, ["check-data", "--data-root", str(avss_tree), "--subset", "avss"])
    assert r.exit_code == 0, r.output
    assert "train: 3 clips, 0 with problems" in r.output and r.output.strip().endswith("OK")
    # a colour that is not in the palette: a clear error naming the file and the colour
    bad = tmp_path / "bad.png"
    arr = np.zeros((224, 224, 3), np.uint8)
    arr[5, 7] = (1, 2, 3)
    Image.fromarray(arr).save(bad)
    with pytest.raises(DataError, match=r"bad\.png: colour \(1, 2, 3\) \(1 pixels\) is not one of the 71"):
        read_colour_label(bad)
    # a palette colour beyond the dataset's classes is also refused (class 9 in a 7-class set)
    label = avss_tree / "v1m" / "syn_val_0001" / "labels_rgb" / "2.png"
    arr = np.asarray(Image.open(label).convert("RGB")).copy()
    arr[0, 0] = v2_palette()[9]
    Image.fromarray(arr).save(label)
    report = check_data(avss_tree, "avss", progress=False, avss_parts="v1m")
    assert [p for p, _ in report.problems] == [label]
    assert "colour (192, 0, 0) (1 pixels)" in report.problems[0][1]
    json.loads((avss_tree / "label2idx.json").read_text())  # untouched
