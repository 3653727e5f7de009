"""Stage-one extraction on a tiny synthetic MS3 set with the tiny random encoders."""

import logging
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stbava.cache import CacheError, open_cache
from stbava.cli import main
from stbava.config import ConfigError, EncoderConfig
from stbava.data.clips import DataError, load_clips
from stbava.data.io import load_audio, read_frame
from stbava.data.synthetic import write_synthetic
from stbava.data.transforms import frames_to_sam_input, waveform_to_examples
from stbava.device import resolve_device
from stbava.encoders.audio import build_vggish, embed_audio
from stbava.encoders.fingerprint import encoder_fingerprint
from stbava.encoders.image import build_image_encoder
from stbava.pipeline.extract import features as extract
from stbava.pipeline.extract.clip_encoding import encode_batch
from stbava.pipeline.extract.features import run_extraction

T = 5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn"), "ms3", clips_per_split=2, seed=7)


@pytest.fixture(scope="module")
def full_cache(data_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "ms3.zarr"
    s = run_extraction(data_root, "ms3", path, "zarr", EncoderConfig(), batch_size=2, device="cpu",
                       store_log_mel=True, progress=False)
    return path, s


def test_extraction_matches_the_encoders_frame_by_frame(data_root, full_cache):
    path, summary = full_cache
    assert (summary.total, summary.written, summary.skipped) == (6, 6, 0) and summary.device == "cpu"
    reader = open_cache(path, expected_fingerprint=encoder_fingerprint(EncoderConfig(), T))
    clips = load_clips(data_root, "ms3")
    for split in ("train", "val", "test"):
        assert reader.clip_ids(split) == [c.id for c in clips if c.split == split]  # CSV order
    image_encoder, vggish = build_image_encoder("tiny", seed=0), build_vggish(seed=0)
    for clip in (clips[1], clips[4]):
        cached = reader.image_embeddings(clip.id)
        assert cached.dtype == np.float16 and cached.shape == (T, 256, 16, 16)
        for k in (0, T - 1):
            with torch.inference_mode():
                ref = image_encoder(frames_to_sam_input([read_frame(clip.frame_paths[k])], 256))[0].numpy()
            np.testing.assert_allclose(cached[k].astype(np.float32), ref, rtol=2e-3, atol=1e-4)
        mels = waveform_to_examples(load_audio(clip.wav_path), num_examples=T)
        np.testing.assert_array_equal(reader.log_mels(clip.id), mels)
        ref_audio = embed_audio(vggish, mels).numpy()
        audio = reader.audio_embeddings(clip.id)
        assert audio.dtype == np.float32 and audio.shape == (T, 128)
        np.testing.assert_allclose(audio, ref_audio, rtol=1e-4, atol=1e-5)
        assert audio.std() > 0.1  # Kaiming-initialised VGGish: a live audio path
    assert reader.fingerprint["numerics"]["image_amp"] == "off"  # what ran is recorded, and compared on resume and reader.manifest.codec == "blosc-lz4"


def test_rerun_skips_done_clips_without_building_encoders(data_root, full_cache, monkeypatch):
    path, _ = full_cache

    def no_build(*a, **k):
        raise AssertionError("encoders must not be built when every clip is done")

    monkeypatch.setattr(extract, "build_frozen_encoders", no_build)
    s = run_extraction(data_root, "ms3", path, "zarr", EncoderConfig(), device="cpu", store_log_mel=True,
                       progress=False)
    assert (s.written, s.skipped) == (0, 6)


def test_interrupted_run_resumes_to_the_same_cache(data_root, full_cache, tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    real = extract.encode_batch
    calls = []

    def interrupt_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extract, "encode_batch", interrupt_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_extraction(data_root, "ms3", path, "hdf5", EncoderConfig(), batch_size=2, device="cpu",
                       progress=False)
    monkeypatch.undo()
    r = open_cache(path)
    assert r.clip_ids("train") == ["syn_train_0000", "syn_train_0001"] and r.clip_ids("val") == []
    r.close()
    s = run_extraction(data_root, "ms3", path, "hdf5", EncoderConfig(), batch_size=3, device="cpu",
                       progress=False)
    assert (s.written, s.skipped) == (4, 2)
    resumed, straight = open_cache(path), open_cache(full_cache[0])
    for split in straight.splits():
        assert resumed.clip_ids(split) == straight.clip_ids(split)
        for cid in straight.clip_ids(split):
            np.testing.assert_allclose(resumed.image_embeddings(cid).astype(np.float32),
                                       straight.image_embeddings(cid).astype(np.float32), rtol=2e-3, atol=1e-4)
            np.testing.assert_allclose(resumed.audio_embeddings(cid), straight.audio_embeddings(cid),
                                       rtol=1e-4, atol=1e-5)


def test_bad_frame_is_a_data_error_naming_the_file(data_root, tmp_path):
    root = tmp_path / "ms3"
    shutil.copytree(data_root, root)
    bad = load_clips(root, "ms3", ["val"])[1].frame_paths[2]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=rf"clip syn_val_0001: .*{bad.name}"):
        run_extraction(root, "ms3", tmp_path / "c.zarr", "zarr", EncoderConfig(), splits=["val"], batch_size=1,
                       device="cpu", progress=False, num_workers=1)
    assert open_cache(tmp_path / "c.zarr").clip_ids("val") == ["syn_val_0000"]


def test_fingerprint_change_refuses_the_existing_cache(data_root, full_cache):
    with pytest.raises(CacheError, match=r"another encoder \(fingerprint differs in: audio.weights, image.weights\)"):
        run_extraction(data_root, "ms3", full_cache[0], "zarr", EncoderConfig(seed=1), device="cpu",
                       store_log_mel=True, progress=False)


def test_encode_batch_mixes_frame_sizes(data_root):
    image_encoder, vggish = build_image_encoder("tiny", seed=0), build_vggish(seed=0)
    clip = load_clips(data_root, "ms3", ["train"])[0]
    frames = [read_frame(p) for p in clip.frame_paths[:2]]
    mels = torch.from_numpy(waveform_to_examples(load_audio(clip.wav_path), num_examples=2))
    square = {"frames": frames_to_sam_input(frames, 256), "mels": mels}
    wide = {"frames": frames_to_sam_input([np.ascontiguousarray(f[:150]) for f in frames], 256), "mels": mels}
    both = encode_batch(image_encoder, vggish, [square, wide], torch.device("cpu"))
    alone = [encode_batch(image_encoder, vggish, [it], torch.device("cpu"))[0] for it in (square, wide)]
    assert both[1][0].shape == (2, 256, 16, 16)
    for (img_a, aud_a), (img_b, aud_b) in zip(both, alone):
        np.testing.assert_allclose(img_a.astype(np.float32), img_b.astype(np.float32), rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(aud_a, aud_b, rtol=1e-4, atol=1e-5)


def test_option_guards(data_root, tmp_path):
    with pytest.raises(ConfigError, match="--amp must be off or bf16"):
        run_extraction(data_root, "ms3", tmp_path / "c.zarr", amp="fp8", progress=False)
    with pytest.raises(ConfigError, match="--batch-size"):
        run_extraction(data_root, "ms3", tmp_path / "c.zarr", batch_size=0, progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_cuda_request_on_a_host_without_cuda_is_a_clear_error(data_root, tmp_path, monkeypatch):
    # runs on every host: torch is made to report no GPU, as a CPU-only build does
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="no CUDA device"):
            run_extraction(data_root, "ms3", tmp_path / "c.zarr", device=device, progress=False)
    assert not (tmp_path / "c.zarr").exists()
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast extraction on cuda)")
def test_bf16_on_cuda_is_used_and_recorded(data_root, full_cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        s = run_extraction(data_root, "ms3", tmp_path / "c.zarr", splits=["test"], amp="bf16", device="cuda",
                           progress=False)
    assert s.written == 2 and s.device.startswith("cuda") and "float32" not in caplog.text
    reader, fp32 = open_cache(tmp_path / "c.zarr"), open_cache(full_cache[0])
    assert reader.manifest.info["numerics"]["dtype"] == "bfloat16" and reader.manifest.info["device"] == "cuda"
    for cid in fp32.clip_ids("test"):  # bf16 (8-bit mantissa) stays within a few % of the float32 CPU cache
        got = reader.image_embeddings(cid).astype(np.float32)
        want = fp32.image_embeddings(cid).astype(np.float32)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05


def test_cli_extract_features(data_root, tmp_path):
    cache = tmp_path / "cli.h5"
    args = ["extract-features", "--data-root", str(data_root.parent), "--subset", "ms3", "--cache", str(cache),
            "--backend", "hdf5", "--split", "val", "--num-workers", "0", "--no-progress", "--batch-size", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 clips, wrote 2, 0 already done" in res.output and "(hdf5" in res.output
    assert open_cache(cache).clip_ids("val") == ["syn_val_0000", "syn_val_0001"]
    res = CliRunner().invoke(main, [*args, "--seed", "5"])
    assert res.exit_code == 1 and "another encoder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["extract-features", "--data-root", str(tmp_path / "nowhere"), "--subset", "ms3",
                                    "--cache", str(tmp_path / "x.zarr")])
    assert res.exit_code == 1 and "no ms3_meta_data.csv" in res.output and "Traceback" not in res.output
