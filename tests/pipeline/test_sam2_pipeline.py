"""SAM 2 through the real CLI on a generated MS3 tree: extract (an official-format SAM 2 checkpoint) ->
train-fusion -> eval -> predict; the cache holds what SAM 2's own image path gives, and SAM / SAM 2 never mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from stbava.cache import open_cache
from stbava.cli import main
from stbava.data.clips import load_clips
from stbava.data.io import read_frame
from stbava.feature_levels import unpack_levels
from stbava.testing import build_sam2_by_hand, write_fake_sam2_checkpoint, write_test_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(*args: object, ok: bool = True) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (res.exit_code == 0) == ok, res.output
    return res.output


@pytest.fixture(scope="module")
def sam2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam2_e2e")
    data, cache, run = root / "data", root / "cache.zarr", root / "run"
    ckpt = write_fake_sam2_checkpoint(root / "weights" / "sam2_mini.pt", seed=2)
    _run("synth", data, "--subset", "ms3", "--clips-per-split", 1, "--seed", 1, "--frames", 2)  # T=2: fast
    _run("extract-features", "--data-root", data, "--subset", "ms3", "--cache", cache, "--encoder", "sam2_mini",
         "--sam-checkpoint", ckpt, "--batch-size", 2, "--no-progress", "--num-workers", 0, "--frames", 2)
    out = _run("train-fusion", "--cache", cache, "--data-root", data, "--run-dir", run, "--epochs", 1,
               "--batch-size", 1, "--fusion", "none", "--lr", 1e-3, "--max-steps", 2)
    assert "best val mIoU" in out
    return {"root": root, "data": data, "cache": cache, "run": run, "ckpt": ckpt}


def test_cache_holds_sam2_image_features(sam2_run) -> None:
    reader = open_cache(sam2_run["cache"])
    image = reader.fingerprint["image"]
    assert image["family"] == "sam2" and image["weights"].startswith("sha256:") and reader.emb_shape == (1024, 16, 16)
    clip = load_clips(sam2_run["data"], "ms3", ["test"])[0]
    cached = torch.from_numpy(reader.image_embeddings(clip.id, [0])).float()
    assert cached.dtype == torch.float32 and reader.image_embeddings(clip.id).dtype == np.float16
    # SAM2Transforms + SAM2ImagePredictor.set_image by hand on frame 1 (torchvision's tensor Resize = antialiased
    # bilinear interpolate)
    model = build_sam2_by_hand(seed=2)
    x = torch.from_numpy(read_frame(clip.frame_paths[0])).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, (256, 256), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        _, feats, _, _ = model._prepare_backbone_features(model.forward_image(x))
        feats[-1] = feats[-1] + model.no_mem_embed
    want = [f.permute(1, 2, 0).reshape(1, -1, s, s) for f, s in zip(feats, (64, 32, 16))]
    embed, levels = unpack_levels(cached, 256)
    for got, ref in zip([*levels, embed], want):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=3e-3)


def test_eval_and_predict_on_sam2(sam2_run, tmp_path) -> None:
    rep = tmp_path / "report.json"
    _run("eval", "--checkpoint", sam2_run["run"] / "best.pt", "--cache", sam2_run["cache"], "--data-root",
         sam2_run["data"], "--split", "test", "--out", rep)
    report = json.loads(rep.read_text())
    assert report["clips"] == 1 and 0.0 <= report["miou"] <= 1.0
    assert report["cache_fingerprint"]["image"]["encoder"] == "sam2_mini"
    video = write_test_video(tmp_path / "v.mp4", 2.0, size=(64, 48))
    sam2_run["ckpt"].rename(tmp_path / sam2_run["ckpt"].name)  # predict finds the recorded file again by name
    out = _run("predict", "--checkpoint", sam2_run["run"], "--input", video, "--out", tmp_path / "pred",
               "--weights-dir", tmp_path)
    masks = sorted((tmp_path / "pred").rglob("*.png"))
    assert masks, out
    (tmp_path / sam2_run["ckpt"].name).rename(sam2_run["ckpt"])


def test_sam2_checkpoint_against_a_sam_cache_is_refused(sam2_run, tmp_path) -> None:
    sam_cache = tmp_path / "sam.zarr"
    _run("extract-features", "--data-root", sam2_run["data"], "--subset", "ms3", "--cache", sam_cache, "--encoder",
         "tiny", "--split", "test", "--no-progress", "--num-workers", 0, "--frames", 2)
    out = _run("eval", "--checkpoint", sam2_run["run"] / "best.pt", "--cache", sam_cache, "--data-root",
               sam2_run["data"], "--split", "test", "--out", tmp_path / "r.json", ok=False)
    assert "SAM 2 (sam2_mini) vs SAM (tiny)" in out or "SAM (tiny) vs SAM 2 (sam2_mini)" in out
    out = _run("extract-features", "--data-root", sam2_run["data"], "--subset", "ms3", "--cache", sam_cache,
               "--encoder", "sam2_mini", "--split", "test", "--no-progress", "--num-workers", 0, "--frames", 2, ok=False)
    assert "SAM and SAM 2 features never mix" in out


def test_stage_three_is_refused_by_name(sam2_run, tmp_path) -> None:
    out = _run("finetune-adapters", "--data-root", sam2_run["data"], "--init", sam2_run["run"], "--run-dir",
               tmp_path / "ad", "--epochs", 1, ok=False)
    assert "not available for SAM 2 encoders" in out and "constant-width ViT" in out
