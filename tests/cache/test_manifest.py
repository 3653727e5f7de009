"""CacheManifest: JSON round trip, schema/damage checks, clip rows, fingerprint comparison, atomic writes."""

import json
import os

import pytest

from stbava.cache.manifest import (
    AUDIO,
    IMAGE,
    LOG_MEL,
    SCHEMA_VERSION,
    CacheError,
    CacheManifest,
    array_specs,
    write_json_atomic,
)
from stbava.provenance import fingerprint_differences, normalise


def _manifest(**kw):
    base = {"backend": "zarr", "frames": 5, "arrays": array_specs(5, (256, 16, 16), True),
            "fingerprint": {"image": {"arch": "tiny", "global": (1,)}, "frames": 5},
            "splits": {"train": ["a", "b"], "val": ["c"]}, "codec": "blosc-lz4"}
    base.update(kw)
    return CacheManifest(**base)


def test_array_specs_dtypes_shapes_and_chunks():
    specs = array_specs(5, (256, 64, 64), store_log_mel=True)
    assert specs[IMAGE].dtype == "float16" and specs[IMAGE].shape(7, 5) == (7, 5, 256, 64, 64)
    assert specs[IMAGE].chunks(5) == (1, 1, 256, 64, 64)  # one chunk per frame
    assert specs[AUDIO].dtype == "float32" and specs[AUDIO].chunks(5) == (1, 5, 128)  # one clip per chunk
    assert specs[LOG_MEL].shape(2, 5) == (2, 5, 1, 96, 64) and specs[LOG_MEL].chunks(5) == (1, 1, 1, 96, 64)
    assert LOG_MEL not in array_specs(5, (256, 64, 64), store_log_mel=False)


def test_round_trip_through_json():
    m = _manifest(info={"amp": "off"})
    back = CacheManifest.from_dict(json.loads(m.to_json()), "x")
    assert back.to_dict() == m.to_dict()
    assert back.locate("c") == ("val", 0) and back.locate("b") == ("train", 1) and back.locate("zz") is None
    assert back.has_log_mel and back.emb_shape == (256, 16, 16)
    assert back.schema_version == SCHEMA_VERSION


def test_fingerprint_is_normalised_so_tuple_and_list_compare_equal():
    m = _manifest()
    assert m.fingerprint == normalise({"frames": 5, "image": {"global": [1], "arch": "tiny"}})
    assert fingerprint_differences(m.fingerprint, {"frames": 5, "image": {"arch": "tiny", "global": [1]}}) == []
    assert fingerprint_differences(m.fingerprint, {"frames": 4, "image": {"arch": "tiny", "global": [1]},
                                                   "pca": None}) == ["frames", "pca"]
    assert fingerprint_differences(m.fingerprint, {"frames": 5, "image": {"arch": "vit_h", "global": [1]}}) \
        == ["image.arch"]


def test_newer_schema_and_damaged_manifest_are_cache_errors():
    d = _manifest().to_dict()
    with pytest.raises(CacheError, match=r"cache /c/x\.zarr: schema version 99.*extract-features"):
        CacheManifest.from_dict({**d, "schema_version": 99}, "/c/x.zarr")
    broken = {k: v for k, v in d.items() if k != "arrays"}
    with pytest.raises(CacheError, match="damaged manifest"):
        CacheManifest.from_dict(broken, "/c/x.zarr")
    no_audio = {**d, "arrays": {k: v for k, v in d["arrays"].items() if k != AUDIO}}
    with pytest.raises(CacheError, match="lacks the image/audio"):
        CacheManifest.from_dict(no_audio, "/c/x.zarr")


def test_add_clips_appends_in_order_and_rejects_split_changes():
    m = _manifest()
    grown = m.add_clips([("a", "train"), ("d", "train"), ("e", "test"), ("f", "test")])
    assert grown == {"train": 3, "test": 2}
    assert m.splits == {"train": ["a", "b", "d"], "val": ["c"], "test": ["e", "f"]}
    assert m.locate("d") == ("train", 2) and m.locate("f") == ("test", 1)
    assert m.add_clips([("a", "train")]) == {}
    with pytest.raises(CacheError, match="cached under split 'train' but requested as 'val'"):
        m.add_clips([("a", "val")])


def test_duplicate_clip_ids_across_splits_are_rejected():
    with pytest.raises(CacheError, match="appears twice"):
        _manifest(splits={"train": ["a"], "val": ["a"]})


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, '{"v": 1}')
    write_json_atomic(p, '{"v": 2}')
    assert json.loads(p.read_text()) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    write_json_atomic(p, '{"v": 1}')

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(p, '{"v": 2}')
    assert json.loads(p.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]
