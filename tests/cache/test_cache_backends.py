"""The reader/writer contract, run against every backend: round trip, resume, crash safety, guards."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from stbava.cache import CacheError, create_cache, get_backend, open_cache
from stbava.cache.manifest import IMAGE

T, EMB = 3, (256, 4, 4)
FP = {"image": {"arch": "tiny", "img_size": 64}, "vggish": "random-init seed=0", "frames": T}
CLIPS = [("v1", "train"), ("v2", "train"), ("v3", "val"), ("v4", "test")]
BACKENDS = ["zarr", "hdf5"]
SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}


def clip_data(cid, log_mel=False):
    rng = np.random.default_rng(int.from_bytes(cid.encode(), "little"))
    out = (rng.standard_normal((T, *EMB)).astype(np.float32), rng.standard_normal((T, 128)).astype(np.float32))
    return (*out, rng.standard_normal((T, 1, 96, 64)).astype(np.float32)) if log_mel else out


def make(tmp_path, backend, clips=CLIPS, fp=FP, log_mel=False, name="c", **kw):
    return create_cache(tmp_path / f"{name}{SUFFIX[backend]}", backend, fingerprint=fp, clips=clips, frames=T,
                        emb_shape=EMB, store_log_mel=log_mel, **kw)


def fill(writer, ids, log_mel=False):
    for cid in ids:
        writer.write_clip(cid, *clip_data(cid, log_mel))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log_mel", [False, True])
def test_round_trip(tmp_path, backend, log_mel):
    with make(tmp_path, backend, log_mel=log_mel) as w:
        fill(w, ["v4", "v1", "v2"], log_mel)  # out of row order on purpose
        assert w.num_done() == 3 and w.backend == backend
    r = open_cache(w.path)
    assert r.backend == backend and r.fingerprint == {**FP, "image": dict(FP["image"])}
    assert r.splits() == ["train", "val", "test"]
    assert r.clip_ids("train") == ["v1", "v2"] and r.clip_ids("val") == [] and r.clip_ids("test") == ["v4"]
    assert r.clip_ids("nosuch") == []
    for cid in ("v1", "v2", "v4"):
        data = clip_data(cid, log_mel)
        img = r.image_embeddings(cid)
        assert img.dtype == np.float16 and img.shape == (T, *EMB)
        np.testing.assert_array_equal(img, data[0].astype(np.float16))
        aud = r.audio_embeddings(cid)
        assert aud.dtype == np.float32 and aud.shape == (T, 128)
        np.testing.assert_array_equal(aud, data[1])
        if log_mel:
            np.testing.assert_array_equal(r.log_mels(cid), data[2])
    full = r.image_embeddings("v1")
    np.testing.assert_array_equal(r.image_embeddings("v1", frames=[2, 0]), full[[2, 0]])
    np.testing.assert_array_equal(r.image_embeddings("v1", frames=slice(1, 3)), full[1:3])
    np.testing.assert_array_equal(r.audio_embeddings("v1", frames=[1]), r.audio_embeddings("v1")[[1]])
    if not log_mel:
        with pytest.raises(CacheError, match="no log-mels.*--store-log-mel"):
            r.log_mels("v1")
    with pytest.raises(CacheError, match="'v3' is not extracted yet.*resumes"):
        r.image_embeddings("v3")
    with pytest.raises(CacheError, match="'nope' is not in cache"):
        r.audio_embeddings("nope")
    r.close()


def test_zarr_and_hdf5_hold_the_same_arrays(tmp_path):
    readers = []
    for backend in BACKENDS:
        with make(tmp_path, backend, log_mel=True) as w:
            fill(w, ["v1", "v3", "v2"], log_mel=True)
        readers.append(open_cache(w.path))
    z, h = readers
    assert z.manifest.splits == h.manifest.splits and z.fingerprint == h.fingerprint
    assert {k: v.to_dict() for k, v in z.manifest.arrays.items()} == \
        {k: v.to_dict() for k, v in h.manifest.arrays.items()}
    for split in z.splits():
        assert z.clip_ids(split) == h.clip_ids(split)
        for cid in z.clip_ids(split):
            for get in ("image_embeddings", "audio_embeddings", "log_mels"):
                a, b = getattr(z, get)(cid), getattr(h, get)(cid)
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_chunk_per_frame_and_no_shards(tmp_path, backend):
    with make(tmp_path, backend, log_mel=True) as w:
        path = w.path
    if backend == "zarr":
        import zarr

        img = zarr.open_array(str(path / "train" / "image"), mode="r")
        assert img.chunks == (1, 1, *EMB) and img.shards is None
        assert zarr.open_array(str(path / "train" / "done"), mode="r").chunks == (1,)
        assert zarr.open_array(str(path / "val" / "log_mel"), mode="r").chunks == (1, 1, 1, 96, 64)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            assert f["train/image"].chunks == (1, 1, *EMB) and f["train/image"].dtype == np.float16
            assert f["val/log_mel"].chunks == (1, 1, 1, 96, 64) and f["test/audio"].dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_skips_done_and_appends_new_clips(tmp_path, backend):
    with make(tmp_path, backend, clips=CLIPS[:2]) as w:
        fill(w, ["v1"])
    more = CLIPS + [("v5", "train")]
    with make(tmp_path, backend, clips=more) as w:
        assert [c for c, _ in more if w.is_done(c)] == ["v1"]
        assert w.manifest.splits == {"train": ["v1", "v2", "v5"], "val": ["v3"], "test": ["v4"]}
        fill(w, ["v5", "v3"])
    r = open_cache(w.path)
    assert r.clip_ids("train") == ["v1", "v5"] and r.clip_ids("val") == ["v3"]
    for cid in ("v1", "v5", "v3"):
        np.testing.assert_array_equal(r.audio_embeddings(cid), clip_data(cid)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_mid_clip_leaves_clip_not_done(tmp_path, backend):
    w = make(tmp_path, backend)
    fill(w, ["v1"])
    original = w._storage.write_row

    def write_image_then_fail(split, row, arrays):
        original(split, row, {IMAGE: arrays[IMAGE]})
        raise RuntimeError("killed mid-clip")

    w._storage.write_row = write_image_then_fail
    with pytest.raises(RuntimeError, match="mid-clip"):
        w.write_clip("v2", *clip_data("v2"))
    with pytest.raises(RuntimeError, match="mid-clip"):  # overwriting a done clip unflags it first
        w.write_clip("v1", *clip_data("v2"))
    assert not w.is_done("v2") and not w.is_done("v1")
    w.close()
    r = open_cache(w.path)
    assert r.clip_ids("train") == []
    with pytest.raises(CacheError, match="not extracted yet"):
        r.image_embeddings("v2")
    r.close()
    with make(tmp_path, backend) as w2:
        assert not w2.is_done("v2")
        fill(w2, ["v1", "v2"])
    r = open_cache(w.path)
    assert r.clip_ids("train") == ["v1", "v2"]
    np.testing.assert_array_equal(r.image_embeddings("v2"), clip_data("v2")[0].astype(np.float16))


_KILLED_WRITER = """
import os, sys
import numpy as np
sys.path.insert(0, {test_dir!r})
from test_cache_backends import make, fill, clip_data
from stbava.cache.manifest import IMAGE
import pathlib
w = make(pathlib.Path({tmp!r}), {backend!r})
fill(w, ["v1"])
orig = w._storage.write_row
def die(split, row, arrays):
    orig(split, row, {{IMAGE: arrays[IMAGE]}})
    os._exit(3)  # hard kill: no cleanup, no close; the lock file stays, the OS drops the lock itself
w._storage.write_row = die
w.write_clip("v2", *clip_data("v2"))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_killed_writer_resumes_without_lock_cleanup(tmp_path, backend):
    code = _KILLED_WRITER.format(test_dir=os.path.dirname(__file__), tmp=str(tmp_path), backend=backend)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3, proc.stderr
    path = tmp_path / f"c{SUFFIX[backend]}"
    assert path.with_name(path.name + ".lock").exists()
    r = open_cache(path)
    assert r.clip_ids("train") == ["v1"]
    r.close()
    with make(tmp_path, backend) as w:  # the leftover lock file is simply reused (its flock died with the writer)
        assert w.is_done("v1") and not w.is_done("v2")
        fill(w, ["v2"])
    assert not path.with_name(path.name + ".lock").exists()
    assert open_cache(path).clip_ids("train") == ["v1", "v2"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fingerprint_mismatch_is_a_clear_error(tmp_path, backend):
    with make(tmp_path, backend) as w:
        fill(w, ["v1"])
    other = {**FP, "vggish": "sha256:abc"}
    with pytest.raises(CacheError, match=rf"cache {w.path}.*another encoder.*differs in: vggish.*"
                                         r"stbava extract-features --cache.*make extract-features"):
        open_cache(w.path, expected_fingerprint=other)
    assert open_cache(w.path, expected_fingerprint=dict(FP)).clip_ids("train") == ["v1"]
    with pytest.raises(CacheError, match=r"another encoder.*differs in: vggish.*another --cache path"):
        make(tmp_path, backend, fp=other)
    with make(tmp_path, backend) as w:  # the failed attempt released the lock
        assert w.is_done("v1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_writer_is_refused_while_first_holds_the_lock(tmp_path, backend):
    w = make(tmp_path, backend)
    with pytest.raises(CacheError, match=rf"being written by pid {os.getpid()}.*lock file"):
        make(tmp_path, backend)
    w.close()
    make(tmp_path, backend).close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_backend_and_codec_guards(tmp_path, backend):
    make(tmp_path, backend).close()
    other = "hdf5" if backend == "zarr" else "zarr"
    with pytest.raises(CacheError, match=rf"is a {backend} store; pass --backend {backend}"):
        create_cache(tmp_path / f"c{SUFFIX[backend]}", other, fingerprint=FP, clips=CLIPS, frames=T,
                     emb_shape=EMB)
    with pytest.raises(CacheError, match="created without --store-log-mel; resume it with the same"):
        make(tmp_path, backend, log_mel=True)
    with pytest.raises(CacheError, match="another layout"):
        create_cache(tmp_path / f"c{SUFFIX[backend]}", backend, fingerprint=FP, clips=CLIPS, frames=T,
                     emb_shape=(256, 8, 8))
    with pytest.raises(CacheError, match="codec 'nope' is not available"):
        make(tmp_path, backend, name="d", codec="nope")
    with pytest.raises(CacheError, match="cached under split"):
        make(tmp_path, backend, clips=[("v1", "val")])


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_validates_shapes_values_and_clip(tmp_path, backend):
    with make(tmp_path, backend, log_mel=True) as w:
        img, aud, mel = clip_data("v1", log_mel=True)
        with pytest.raises(CacheError, match=r"image of clip v1 has shape \(2, 256, 4, 4\), expected \(3, 256, 4, 4\)"):
            w.write_clip("v1", img[:2], aud, mel)
        with pytest.raises(CacheError, match="audio of clip v1 has shape"):
            w.write_clip("v1", img, aud[:, :64], mel)
        with pytest.raises(CacheError, match="stores log-mels but none"):
            w.write_clip("v1", img, aud)
        bad = img.copy()
        bad[0, 0, 0, 0] = 1e6  # overflows float16
        with pytest.raises(CacheError, match="NaN/inf"):
            w.write_clip("v1", bad, aud, mel)
        with pytest.raises(CacheError, match="'zz' is not listed"):
            w.write_clip("zz", img, aud, mel)
        assert w.num_done() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_codec_round_trips(tmp_path, backend):
    for codec in get_backend(backend).codecs:
        with make(tmp_path, backend, name=codec, codec=codec) as w:
            fill(w, ["v1"])
        r = open_cache(w.path)
        assert r.manifest.codec == codec
        np.testing.assert_array_equal(r.image_embeddings("v1"), clip_data("v1")[0].astype(np.float16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_creation_leaves_nothing_behind(tmp_path, backend, monkeypatch):
    cls = get_backend(backend)
    real = cls.create

    def half_create(path, manifest):
        real(path, manifest)
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "create", staticmethod(half_create))
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, backend)
    assert os.listdir(tmp_path) == []
    with pytest.raises(CacheError, match="no feature cache at .*extract-features"):
        open_cache(tmp_path / f"c{SUFFIX[backend]}")
    stale = tmp_path / f".c{SUFFIX[backend]}.partial-999999"
    stale.mkdir()
    monkeypatch.undo()
    make(tmp_path, backend).close()
    assert sorted(os.listdir(tmp_path)) == [f"c{SUFFIX[backend]}"]


def test_not_a_cache(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(CacheError, match="not a stbava feature cache"):
        open_cache(tmp_path / "plain")
    with pytest.raises(CacheError, match="unknown cache backend 'lmdb'"):
        create_cache(tmp_path / "x", "lmdb", fingerprint=FP, clips=CLIPS, frames=T, emb_shape=EMB)


class _Clips(torch.utils.data.Dataset):
    def __init__(self, reader, ids):
        self.reader, self.ids = reader, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(self.reader.image_embeddings(self.ids[i]).astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_pickles_and_works_in_dataloader_workers(tmp_path, backend):
    with make(tmp_path, backend) as w:
        fill(w, ["v1", "v2", "v4"])
    r = open_cache(w.path)
    first = r.image_embeddings("v1")  # the parent now holds an open handle
    clone = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(clone.image_embeddings("v1"), first)
    ids = ["v1", "v2", "v4"]
    loader = torch.utils.data.DataLoader(_Clips(r, ids), batch_size=1, num_workers=2)
    got = [b[0].numpy() for b in loader]
    for cid, arr in zip(ids, got):
        np.testing.assert_array_equal(arr, clip_data(cid)[0].astype(np.float16).astype(np.float32))


def _damage_one_frame(path, backend, how):
    """Flip one byte in (or cut short) the stored chunk of train clip row 0, frame 1 of the image array."""
    if backend == "zarr":
        chunk = path / "train" / IMAGE / "c" / "0" / "1" / "0" / "0" / "0"
        data = bytearray(chunk.read_bytes())
        if how == "flip":
            data[len(data) // 2] ^= 0x01
        chunk.write_bytes(bytes(data if how == "flip" else data[: len(data) // 3]))
        return
    import h5py

    with h5py.File(path, "r") as f:
        info = f[f"train/{IMAGE}"].id.get_chunk_info_by_coord((0, 1, 0, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([b[0] ^ 0x01]) if how == "flip" else b"\0" * (info.size // 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_chunk_is_always_a_clear_error_never_silent_numbers(tmp_path, backend, how):
    """Every stored chunk carries a checksum, so even a one-bit change reads as damage (what --verify relies on)."""
    for codec in get_backend(backend).codecs:
        with make(tmp_path, backend, name=codec, codec=codec) as w:
            fill(w, ["v1", "v2"])
        _damage_one_frame(w.path, backend, how)
        r = open_cache(w.path)
        with pytest.raises(CacheError, match="data of clip 'v1' is damaged.*--verify"):
            r.image_embeddings("v1")
        np.testing.assert_array_equal(r.image_embeddings("v1", frames=[0, 2]),
                                      clip_data("v1")[0][[0, 2]].astype(np.float16))
        np.testing.assert_array_equal(r.image_embeddings("v2"), clip_data("v2")[0].astype(np.float16))
        r.close()
        with make(tmp_path, backend, name=codec, codec=codec) as w2:  # reopening resumes the same cache
            assert w2.verify() == ["v1"] and w2.num_done() == 1
