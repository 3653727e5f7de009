"""Transforms: VGGish examples equal torchvggish's; frames resized like SAM's ResizeLongestSide."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from stbava.data.clips import DataError
from stbava.data.transforms import frames_to_sam_input, sam_resize_shape, waveform_to_examples
from stbava.thirdparty import vggish_mel


def _reference_examples(wav: np.ndarray, sr: int = 16000) -> np.ndarray:
    vggish_mel()  # registers the bare torchvggish package so vggish_input imports without its __init__
    vi = importlib.import_module("torchvggish.vggish_input")
    return vi.waveform_to_examples(wav, sr).detach().numpy()


def _noise_wav(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)).astype(np.float32)


def test_examples_equal_torchvggish_for_5s_mono():
    wav = _noise_wav(5.0)
    ours = waveform_to_examples(wav)
    ref = _reference_examples(wav)
    assert ours.shape == ref.shape == (5, 1, 96, 64) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_examples_equal_torchvggish_for_int16_scaled_input():
    pcm = np.random.default_rng(3).integers(-30000, 30000, 80000, dtype=np.int16)
    wav = pcm / 32768.0  # float64, exactly what torchvggish's wavfile_to_examples feeds
    np.testing.assert_array_equal(waveform_to_examples(wav), _reference_examples(wav))


def test_short_audio_pads_by_repeating_last_example():
    wav = _noise_wav(2.0)
    ref = _reference_examples(wav)
    assert ref.shape[0] == 2
    ours = waveform_to_examples(wav)
    assert ours.shape == (5, 1, 96, 64)
    np.testing.assert_array_equal(ours[:2], ref)
    for k in range(2, 5):
        np.testing.assert_array_equal(ours[k], ref[1])


def test_long_audio_truncated_to_first_examples():
    wav = _noise_wav(7.0)
    ref = _reference_examples(wav)
    assert ref.shape[0] == 7
    np.testing.assert_array_equal(waveform_to_examples(wav), ref[:5])
    assert waveform_to_examples(wav, num_examples=3).shape == (3, 1, 96, 64)


def test_silence_is_constant_log_offset():
    ex = waveform_to_examples(np.zeros(80000, np.float32))
    np.testing.assert_allclose(ex, np.log(0.01), rtol=1e-6)


def test_example_k_covers_its_own_0p96s_window():
    # A tone only inside [0.96*2, 0.96*3) s must light up example 2 and no other.
    wav = np.zeros(80000, np.float32)
    a, b = int(0.96 * 2 * 16000), int(0.96 * 3 * 16000)
    wav[a:b] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(b - a) / 16000)
    energy = waveform_to_examples(wav)[:, 0].mean(axis=1).max(axis=1)  # time-averaged, loudest band
    assert np.argmax(energy) == 2
    assert energy[2] > energy[[0, 1, 3, 4]].max() + 3.0


def test_too_short_for_one_example_raises():
    with pytest.raises(DataError, match="shorter than one 0.96 s"):
        waveform_to_examples(np.zeros(15000, np.float32))


def test_other_rate_is_resampled():
    sr = 22050
    t = np.arange(5 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    ex = waveform_to_examples(x, sr=sr)
    ref16 = waveform_to_examples(0.3 * np.sin(2 * np.pi * 440 * np.arange(80000) / 16000))
    assert ex.shape == (5, 1, 96, 64)
    # same tone at 16 kHz: the mel profiles agree closely (resampling error only)
    np.testing.assert_allclose(ex.mean(axis=(0, 1, 2)), ref16.mean(axis=(0, 1, 2)), atol=0.05)


# ---------------------------------------------------------------- frames


def test_sam_resize_shape_matches_resize_longest_side_formula():
    assert sam_resize_shape(224, 224, 1024) == (1024, 1024)
    assert sam_resize_shape(360, 640, 1024) == (576, 1024)
    assert sam_resize_shape(300, 224, 1024) == (1024, int(224 * 1024 / 300 + 0.5))
    assert sam_resize_shape(224, 224, 256) == (256, 256)


def test_frames_to_sam_input_square_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    x = frames_to_sam_input(frames, 256)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (3, 3, 256, 256)
    want = np.asarray(Image.fromarray(frames[1]).resize((256, 256), Image.BILINEAR)).astype(np.float32)
    np.testing.assert_array_equal(x[1].permute(1, 2, 0).numpy(), want)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 255.0 and float(x.max()) > 200  # 0..255, not normalised


def test_frames_to_sam_input_keeps_aspect_and_does_not_pad():
    f = np.zeros((300, 224, 3), np.uint8)
    f[..., 0] = 200
    x = frames_to_sam_input([f], 1024)
    assert x.shape == (1, 3, 1024, int(224 * 1024 / 300 + 0.5))
    assert torch.all(x[0, 0] == 200) and torch.all(x[0, 1:] == 0)


def test_frames_to_sam_input_same_size_is_identity():
    f = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(frames_to_sam_input([f], 64)[0].permute(1, 2, 0).numpy(), f)


def test_frames_to_sam_input_rejects_mixed_sizes_and_bad_dtype():
    with pytest.raises(DataError, match="share a size"):
        frames_to_sam_input([np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)], 32)
    with pytest.raises(DataError, match="uint8 RGB"):
        frames_to_sam_input([np.zeros((10, 10, 3), np.float32)], 32)
    with pytest.raises(DataError, match="no frames"):
        frames_to_sam_input([], 32)


def test_stereo_samples_by_channels_matches_torchvggish():
    rng = np.random.default_rng(5)
    st = 0.2 * rng.standard_normal((80000, 2))
    np.testing.assert_array_equal(waveform_to_examples(st), _reference_examples(st))
