"""The real workflow of docs/workflow.md, command by command, with weight files in the official formats.

Random weights saved exactly as ``sam_vit_*.pth`` (full SAM state dict), ``vggish-10086976.pth`` and the VGGish
PCA params file (numpy arrays pickled by torch, as released); the tiny SAM architecture keeps it fast. At each
stage the outputs are compared with what ``segment_anything`` + ``torchvggish`` + the PCA formula give when run by
hand on the same files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from test_end_to_end import _write_video

import stbava
from stbava import thirdparty
from stbava.checkpoint import read_checkpoint
from stbava.cli import main
from stbava.data.clips import load_clips
from stbava.data.io import load_audio, read_clip_frames, read_frame
from stbava.data.transforms import frames_to_sam_input, waveform_to_examples
from stbava.pipeline.core.restore import restore_net
from stbava.testing import (
    build_sam,
    write_fake_sam_checkpoint,
    write_fake_vggish_checkpoint,
    write_fake_vggish_pca,
)

T = 5


def _run(*args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _fails(*args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    return res.output


def by_hand_audio(vggish_file: Path, pca_file: Path, wav: Path) -> torch.Tensor:
    """torchvggish's VGG loaded from the file, then the released PCA + 8-bit quantisation formula, ``[T,128]``."""
    tv = thirdparty.vggish_model()
    vgg = tv.VGG(tv.make_layers(), postprocess=False)
    vgg.load_state_dict(torch.load(vggish_file, weights_only=True), strict=True)
    params = torch.load(pca_file, weights_only=False)
    vecs = torch.as_tensor(params["pca_eigen_vectors"]).float()
    means = torch.as_tensor(params["pca_means"]).float().reshape(-1, 1)
    with torch.no_grad():
        raw = vgg.eval()(torch.from_numpy(waveform_to_examples(load_audio(wav), num_examples=T)))
    pca = (vecs @ (raw.t() - means)).t()
    return torch.round((pca.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))


def by_hand_image(sam_file: Path, frames: list[np.ndarray]) -> torch.Tensor:
    """``Sam.image_encoder(Sam.preprocess(x))`` of segment_anything's own Sam, loaded strictly from the file."""
    sam = build_sam("tiny")
    sam.load_state_dict(torch.load(sam_file, weights_only=True), strict=True)
    x = frames_to_sam_input(frames, 256)
    with torch.no_grad():
        return sam.image_encoder(sam.preprocess(x))


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    w = root / "weights"
    files = {"sam": write_fake_sam_checkpoint(w / "sam_tiny.pth", "tiny", seed=3),
             "vggish": write_fake_vggish_checkpoint(w / "vggish-10086976.pth", seed=4),
             "pca": write_fake_vggish_pca(w / "vggish_pca_params-970ea276.pth", seed=5)}
    data = root / "data"
    _run("synth", data, "--subset", "ms3", "--clips-per-split", 2, "--seed", 2)
    data = data / "Multi-sources"
    cache = root / "cache.zarr"
    _run("check-data", "--data-root", data, "--subset", "ms3")
    _run("extract-features", "--data-root", data, "--subset", "ms3", "--cache", cache, "--encoder", "tiny",
         "--sam-checkpoint", files["sam"], "--vggish-checkpoint", files["vggish"], "--vggish-pca", files["pca"],
         "--no-progress", "--num-workers", 0, "--batch-size", 2)
    run = root / "run"
    _run("train-fusion", "--cache", cache, "--data-root", data, "--run-dir", run, "--epochs", 1, "--batch-size", 2,
         "--depth", 1)
    return {"root": root, "data": data, "cache": cache, "run": run, "files": files}


def test_extraction_equals_the_encoders_run_by_hand(flow):
    clip = load_clips(flow["data"], "ms3", ["test"])[0]
    reader = stbava.open_cache(flow["cache"])
    want_audio = by_hand_audio(flow["files"]["vggish"], flow["files"]["pca"], clip.wav_path)
    assert want_audio.max() > 1.0  # quantised PCA output, not the raw ReLU embedding
    torch.testing.assert_close(torch.from_numpy(reader.audio_embeddings(clip.id)), want_audio, atol=1.0, rtol=0)
    assert (torch.from_numpy(reader.audio_embeddings(clip.id)) != want_audio).float().mean() < 0.02
    want_img = by_hand_image(flow["files"]["sam"], read_clip_frames(clip.frame_paths[:T]))
    torch.testing.assert_close(torch.from_numpy(reader.image_embeddings(clip.id)).float(), want_img,
                               atol=5e-3, rtol=5e-3)


def test_stage_two_records_the_files_it_was_trained_on(flow):
    payload = torch.load(flow["run"] / "best.pt", weights_only=True)
    enc = payload["config"]["encoder"]
    for key, what in (("sam_checkpoint", "sam"), ("vggish_checkpoint", "vggish"), ("vggish_pca", "pca")):
        assert Path(enc[key]) == flow["files"][what].resolve()
    sha = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in flow["files"].items()}
    fp = payload["fingerprint"]
    assert fp["image"]["weights"] == "sha256:" + sha["sam"]
    assert fp["audio"]["weights"] == "sha256:" + sha["vggish"] and fp["audio"]["pca"] == "sha256:" + sha["pca"]
    assert fp["numerics"] == {"sdpa": True, "image_amp": "off"}


def test_stage_three_and_eval_from_cache_and_raw_frames(flow):
    adapters = flow["root"] / "adapters"
    _run("finetune-adapters", "--data-root", flow["data"], "--init", flow["run"], "--run-dir", adapters,
         "--epochs", 1, "--batch-size", 1, "--max-steps", 1)
    # stage three feeds the model the audio of the cache: VGGish + the recorded PCA (one audio function)
    net, _ = restore_net(read_checkpoint(adapters / "best.pt"))
    clip = load_clips(flow["data"], "ms3", ["train"])[0]
    mels = torch.from_numpy(waveform_to_examples(load_audio(clip.wav_path), num_examples=T))
    frames = frames_to_sam_input(read_clip_frames(clip.frame_paths[:T]), 256)
    _, audio = net.embedder(frames=frames[None], log_mels=mels[None])
    cached = stbava.open_cache(flow["cache"]).audio_embeddings(clip.id)
    torch.testing.assert_close(audio[0], torch.from_numpy(cached), atol=1.0, rtol=0)
    for ckpt, extra in ((flow["run"] / "best.pt", ["--cache", flow["cache"]]), (adapters / "best.pt", [])):
        out = flow["root"] / f"{ckpt.parent.name}.json"
        _run("eval", "--checkpoint", ckpt, "--data-root", flow["data"], "--out", out, *extra)
        rep = json.loads(out.read_text())
        assert rep["clips"] == 2 and 0.0 <= rep["miou"] <= 1.0


def _video(flow, tmp_path) -> Path:
    clip = load_clips(flow["data"], "ms3", ["test"])[0]
    wav, _ = sf.read(clip.wav_path, dtype="float32")
    video = tmp_path / "clip.mp4"
    _write_video(video, [read_frame(p) for p in clip.frame_paths], wav)
    return video


def _window_logits_by_hand(flow, ckpt: Path, video: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """predict's probabilities for the first window, and the same window through SAM + VGGish + PCA by hand."""
    from stbava.data.video import SR, VideoFile
    from stbava.pipeline.predict.windows import load_predictor

    pred = load_predictor(ckpt, device="cpu")
    secs = list(VideoFile(video).seconds())[:T]
    got = torch.from_numpy(pred.window_probs(secs))
    mels = waveform_to_examples(np.concatenate([s.audio for s in secs]), SR, num_examples=T)
    with torch.no_grad():
        tv = thirdparty.vggish_model()
        vgg = tv.VGG(tv.make_layers(), postprocess=False)
        vgg.load_state_dict(torch.load(flow["files"]["vggish"], weights_only=True))
        params = torch.load(flow["files"]["pca"], weights_only=False)
        raw = vgg.eval()(torch.from_numpy(mels))
        pca = (torch.as_tensor(params["pca_eigen_vectors"]).float()
               @ (raw.t() - torch.as_tensor(params["pca_means"]).float().reshape(-1, 1))).t()
        aud = torch.round((pca.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))
        img = by_hand_image(flow["files"]["sam"], [s.frame for s in secs])
        model, _ = stbava.load_model(ckpt)
        want = torch.sigmoid(model(img[None], aud[None])[0])
    return got, want


def test_predict_uses_the_recorded_encoders(flow, tmp_path):
    video = _video(flow, tmp_path)
    got, want = _window_logits_by_hand(flow, flow["run"] / "best.pt", video)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    out = _run("predict", "--checkpoint", flow["run"], "--input", video, "--out", tmp_path / "pred")
    assert "5 s in 1 window(s)" in out


def test_moved_or_changed_weights_are_found_or_refused(flow, tmp_path):
    video = _video(flow, tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(flow["files"]["sam"].parent, moved)
    hidden = flow["files"]["sam"].with_suffix(".away")
    flow["files"]["sam"].rename(hidden)
    try:
        msg = _fails("predict", "--checkpoint", flow["run"], "--input", video, "--out", tmp_path / "p1")
        sha = hashlib.sha256(hidden.read_bytes()).hexdigest()
        assert "sam_tiny.pth" in msg and sha in msg and "segment_anything" in msg
        _run("predict", "--checkpoint", flow["run"], "--input", video, "--out", tmp_path / "p2",
             "--weights-dir", moved)
        other = write_fake_sam_checkpoint(tmp_path / "other" / "sam_tiny.pth", "tiny", seed=9)
        msg = _fails("predict", "--checkpoint", flow["run"], "--input", video, "--out", tmp_path / "p3",
                     "--sam-checkpoint", other)
        assert "is not the sam file" in msg and sha in msg
    finally:
        hidden.rename(flow["files"]["sam"])


def test_import_official_then_predict(flow, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
    from published_reference import published_file_state

    sd = published_file_state(2, 16, 256, 64, 2, seed=0)
    published = tmp_path / "ms3_best.pth"
    torch.save(sd, published)
    out = tmp_path / "imported.pt"
    msg = _fails("import-official", published, "--out", out, "--encoder", "tiny", "--subset", "ms3")
    assert "sam weights" in msg and "not found" in msg
    _run("import-official", published, "--out", out, "--encoder", "tiny", "--subset", "ms3",
         "--sam-checkpoint", flow["files"]["sam"], "--vggish-checkpoint", flow["files"]["vggish"],
         "--vggish-pca", flow["files"]["pca"])
    video = _video(flow, tmp_path)
    for ckpt in (out, tmp_path / "imported_adapters.pt"):
        _run("predict", "--checkpoint", ckpt, "--input", video, "--out", tmp_path / ckpt.stem)
    got, want = _window_logits_by_hand(flow, out, video)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
