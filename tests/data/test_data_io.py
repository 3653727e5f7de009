"""Readers: frames, masks and audio decode like AVSBench and fail with DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from stbava.data.clips import DataError
from stbava.data.io import MIN_AUDIO_SAMPLES, load_audio, read_frame, read_mask


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


# ---------------------------------------------------------------- frames


def test_read_frame_rgb_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = read_frame(_png(tmp_path / "f.png", arr))
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_read_frame_converts_other_modes_to_rgb(tmp_path, mode):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :15] = (255, 0, 0)
    out = read_frame(_png(tmp_path / "f.png", arr, mode))
    assert out.shape == (20, 30, 3)  # any size accepted, [H,W,3]
    if mode != "L":
        assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 29]) == (0, 0, 0)


def test_read_frame_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(DataError, match="missing video frame") as e:
        read_frame(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="zero-byte"):
        read_frame(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all" * 10)
    with pytest.raises(DataError, match="junk.png: unreadable"):
        read_frame(tmp_path / "junk.png")
    good = _png(tmp_path / "good.png", np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.png: unreadable"):
        read_frame(tmp_path / "trunc.png")


# ---------------------------------------------------------------- masks


def _mask_arr(fg_value: int) -> np.ndarray:
    m = np.zeros((224, 224), np.uint8)
    m[50:100, 60:120] = fg_value
    return m


@pytest.mark.parametrize("fg", [255, 1, 128])
def test_read_mask_binarises_any_nonzero_grey(tmp_path, fg):
    out = read_mask(_png(tmp_path / "m.png", _mask_arr(fg)))
    assert out.dtype == np.float32 and out.shape == (224, 224)
    assert set(np.unique(out)) == {0.0, 1.0}
    assert out.sum() == 50 * 60 and out[50:100, 60:120].all()


def test_read_mask_palette_uses_index_not_colour(tmp_path):
    p = Image.frombytes("P", (224, 224), _mask_arr(1).tobytes())
    p.putpalette([0, 0, 0] * 256)  # every index renders black: only the index says "foreground"
    p.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_mask(tmp_path / "p.png")
    assert out.sum() == 50 * 60


@pytest.mark.parametrize("mode", ["1", "RGB"])
def test_read_mask_bilevel_and_rgb(tmp_path, mode):
    out = read_mask(_png(tmp_path / "m.png", _mask_arr(255), mode))
    assert out.sum() == 50 * 60


def test_read_mask_wrong_size_and_missing(tmp_path):
    _png(tmp_path / "small.png", np.zeros((100, 100), np.uint8))
    with pytest.raises(DataError, match="small.png: mask is 100x100, expected 224x224"):
        read_mask(tmp_path / "small.png")
    assert read_mask(tmp_path / "small.png", size=100).shape == (100, 100)
    with pytest.raises(DataError, match="missing ground-truth mask"):
        read_mask(tmp_path / "none.png")


# ---------------------------------------------------------------- audio


def _wav(path: Path, data: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def test_load_audio_int16_scaled_like_avsbench(tmp_path):
    pcm = np.random.default_rng(0).integers(-32768, 32767, 80000, dtype=np.int16)
    out = load_audio(_wav(tmp_path / "a.wav", pcm))
    assert out.dtype == np.float32 and out.shape == (80000,)
    np.testing.assert_array_equal(out, pcm / 32768.0)


def test_load_audio_stereo_downmix(tmp_path):
    rng = np.random.default_rng(1)
    st = rng.integers(-20000, 20000, (32000, 2), dtype=np.int16)
    out = load_audio(_wav(tmp_path / "s.wav", st))
    np.testing.assert_allclose(out, st.mean(axis=1) / 32768.0, atol=1e-7)


def test_load_audio_resamples_44k1_to_16k(tmp_path):
    sr = 44100
    t = np.arange(2 * sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = load_audio(_wav(tmp_path / "r.wav", x, sr=sr, subtype="FLOAT"))
    assert abs(out.shape[0] - 32000) <= 1
    spec = np.abs(np.fft.rfft(out * np.hanning(out.shape[0])))
    peak_hz = np.argmax(spec) * 16000 / out.shape[0]
    assert abs(peak_hz - 440.0) < 2.0
    assert 0.45 < np.abs(out[1000:-1000]).max() < 0.55


def test_load_audio_silent_and_short_ok(tmp_path):
    out = load_audio(_wav(tmp_path / "z.wav", np.zeros(80000, np.int16)))
    assert out.shape == (80000,) and not out.any()
    two_s = load_audio(_wav(tmp_path / "two.wav", np.ones(32000, np.int16)))
    assert two_s.shape == (32000,)
    edge = load_audio(_wav(tmp_path / "edge.wav", np.ones(MIN_AUDIO_SAMPLES, np.int16)))
    assert edge.shape == (MIN_AUDIO_SAMPLES,)


def test_load_audio_errors(tmp_path):
    with pytest.raises(DataError, match="missing audio"):
        load_audio(tmp_path / "none.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav: empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(range(200)))
    with pytest.raises(DataError, match="junk.wav: unreadable audio"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(DataError, match="shorter than one 0.96 s"):
        load_audio(_wav(tmp_path / "short.wav", np.ones(MIN_AUDIO_SAMPLES - 1, np.int16)))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(20000, np.float32)
        x[100] = bad
        with pytest.raises(DataError, match="NaN or inf"):
            load_audio(_wav(tmp_path / "bad.wav", x, subtype="FLOAT"))
