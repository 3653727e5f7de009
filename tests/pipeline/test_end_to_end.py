"""The user-facing chain on tiny synthetic data through the real CLI: extract -> train -> eval -> predict -> adapters."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from predict_helpers import run_cli as _run

import stbava
from stbava.cli import main
from stbava.data.clips import load_clips
from stbava.data.io import read_frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    _run("synth", data, "--subset", "ms3", "--clips-per-split", 3, "--seed", 1)
    cache = root / "cache.zarr"
    _run("extract-features", "--data-root", data, "--subset", "ms3", "--cache", cache, "--encoder", "tiny",
         "--batch-size", 2, "--no-progress", "--num-workers", 0)
    run = root / "run"
    out = _run("train-fusion", "--cache", cache, "--data-root", data, "--run-dir", run, "--epochs", 1,
               "--batch-size", 2, "--depth", 1, "--lr", 1e-3)
    assert "best val mIoU" in out
    return {"root": root, "data": data, "cache": cache, "run": run}


def test_eval_report_and_artefacts(trained):
    report_path = trained["root"] / "eval" / "report.json"
    masks = trained["root"] / "pred_masks"
    out = _run("eval", "--checkpoint", trained["run"] / "best.pt", "--cache", trained["cache"], "--data-root",
               trained["data"], "--split", "test", "--out", report_path, "--save-masks", masks, "--overlays", 2,
               "--figures", 1)
    assert "mIoU" in out
    rep = json.loads(report_path.read_text())
    assert 0.0 <= rep["miou"] <= 1.0 and 0.0 <= rep["fscore"] <= 1.0
    assert rep["clips"] == 3 and len(rep["per_clip_iou"]) == 3
    assert abs(np.mean(list(rep["per_clip_iou"].values())) - rep["miou"]) < 1e-9
    assert rep["config"]["model"]["depth"] == 1 and len(rep["checkpoint_digest"]) == 64
    assert rep["cache_fingerprint"]["image"]["encoder"] == "tiny"
    clip = load_clips(trained["data"], "ms3", ["test"])[0]
    # AVSBench naming, 1-based frame index
    assert (masks / "test" / clip.id / f"{clip.id}_1.png").is_file()
    assert (masks / "test" / clip.id / f"{clip.id}_5.png").is_file()
    assert len(list((report_path.parent / "overlays").glob("*.png"))) == 2
    assert len(rep["similarity_figures"]) == 1 and Path(rep["similarity_figures"][0]).is_file()


def test_shuffled_audio_changes_predictions(trained):
    a = trained["root"] / "own.json"
    b = trained["root"] / "shuffled.json"
    ckpt = trained["run"] / "best.pt"
    for path, extra in ((a, []), (b, ["--shuffle-audio"])):
        _run("eval", "--checkpoint", ckpt, "--cache", trained["cache"], "--data-root", trained["data"], "--out",
             path, *extra)
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert rb["shuffled_audio"] is True and ra["shuffled_audio"] is False
    assert ra["per_clip_iou"] != rb["per_clip_iou"] or ra["fscore"] != rb["fscore"]


def test_load_model_public_api(trained):
    model, cfg = stbava.load_model(trained["run"] / "best.pt")
    reader = stbava.open_cache(trained["cache"])
    cid = reader.clip_ids("test")[0]
    img = torch.from_numpy(reader.image_embeddings(cid))[None]
    aud = torch.from_numpy(reader.audio_embeddings(cid))[None]
    logits = model(img, aud)
    assert logits.shape == (1, 5, 224, 224) and cfg.model.depth == 1


def _write_video(path: Path, frames: list[np.ndarray], wav: np.ndarray, fps: int = 10) -> None:
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        as_ = c.add_stream("aac", rate=16000)
        as_.layout = "mono"
        for img in frames:
            for _ in range(fps):  # each 1-second frame held for a second
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
        for p in vs.encode():
            c.mux(p)
        step = 1024
        for i in range(0, len(wav), step):
            chunk = wav[i:i + step].astype(np.float32)[None]
            fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            fr.sample_rate = 16000
            fr.pts = i
            for p in as_.encode(fr):
                c.mux(p)
        for p in as_.encode():
            c.mux(p)


def test_predict_on_a_video_and_a_frames_folder(trained, tmp_path):
    clip = load_clips(trained["data"], "ms3", ["test"])[0]
    frames = [read_frame(p) for p in clip.frame_paths]
    wav, sr = sf.read(clip.wav_path, dtype="float32")
    # 7 seconds: one full 5-second window + a partial last window aligned to the end
    frames7 = frames + frames[:2]
    wav7 = np.concatenate([wav, wav[: 2 * sr]])
    video = tmp_path / "clip.mp4"
    _write_video(video, frames7, wav7)
    out = _run("predict", "--checkpoint", trained["run"], "--input", video, "--out", tmp_path / "pred")
    assert "7 s in 2 window(s)" in out
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 7
    with av.open(str(tmp_path / "pred" / "overlay.mp4")) as c:  # every input frame: 7 s at 10 fps
        assert sum(1 for _ in c.decode(video=0)) == 7 * 10

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(clip.frame_paths):
        (folder / f"f{i:02d}.png").write_bytes(p.read_bytes())
    (folder / "audio.wav").write_bytes(clip.wav_path.read_bytes())
    out = _run("predict", "--checkpoint", trained["run"] / "best.pt", "--input", folder, "--out", tmp_path / "p2",
               "--gif")
    assert "5 s in 1 window(s)" in out and (tmp_path / "p2" / "overlay.gif").is_file()


def test_predict_rejects_a_video_without_audio(trained, tmp_path):
    video = tmp_path / "silent.mp4"
    with av.open(str(video), "w") as c:
        vs = c.add_stream("libx264", rate=5)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for _ in range(10):
            for p in vs.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained["run"]), "--input", str(video),
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no audio track" in res.output and "Traceback" not in res.output


def test_finetune_adapters_then_eval_from_raw_frames(trained):
    run = trained["root"] / "adapters"
    out = _run("finetune-adapters", "--data-root", trained["data"], "--init", trained["run"], "--run-dir", run,
               "--epochs", 1, "--batch-size", 2, "--max-steps", 1)
    assert "1 steps" in out
    payload = torch.load(run / "best.pt", weights_only=True)
    keys = set(payload["weights"])
    assert any(k.startswith("embedder.image_encoder.prompt_generator.") for k in keys)
    assert not any(".frozen." in k or k.startswith("model.layers.") for k in keys), "frozen weights saved"
    assert payload["extra"]["init_digest"] and payload["kind"] == "adapters"
    rep = trained["root"] / "adapters.json"
    _run("eval", "--checkpoint", run / "best.pt", "--data-root", trained["data"], "--out", rep)
    assert json.loads(rep.read_text())["checkpoint_kind"] == "adapters"


def test_zero_shot_writes_evals_report_keys_deterministically(trained):
    """`zero-shot` on the cache: eval's report keys and clips, plus prompt / weights / seed; a rerun is identical."""
    eval_path = trained["root"] / "zs" / "eval.json"
    _run("eval", "--checkpoint", trained["run"] / "best.pt", "--cache", trained["cache"], "--data-root",
         trained["data"], "--split", "test", "--out", eval_path)
    ev = json.loads(eval_path.read_text())
    reports = []
    for i in range(2):
        path = trained["root"] / "zs" / f"point3_{i}.json"
        out = _run("zero-shot", "--cache", trained["cache"], "--data-root", trained["data"], "--subset", "ms3",
                   "--split", "test", "--prompt", "point3", "--seed", 7, "--out", path)
        assert "random-init seed=7" in out
        reports.append(json.loads(path.read_text()))
    rep = reports[0]
    metric_keys = {"miou", "fscore", "clips", "pooled_miou", "pooled_fscore", "per_clip_iou", "per_clip_fscore"}
    assert metric_keys <= set(ev) and metric_keys <= set(rep)
    assert rep["per_clip_iou"].keys() == ev["per_clip_iou"].keys() and rep["clips"] == ev["clips"] == 3
    assert 0.0 <= rep["miou"] <= 1.0 and 0.0 <= rep["fscore"] <= 1.0
    assert (rep["prompt"], rep["seed"], rep["split"]) == ("point3", 7, "test")
    assert reports[0] == reports[1]


def test_zero_shot_refuses_a_sam_that_is_not_the_caches(trained, tmp_path):
    """The cache holds random-encoder embeddings: a real-format SAM file's decoder does not fit them."""
    from stbava.testing import write_fake_sam_checkpoint

    sam = write_fake_sam_checkpoint(tmp_path / "sam_vit_h_4b8939.pth")
    out = tmp_path / "zs.json"
    res = CliRunner().invoke(main, ["zero-shot", "--cache", str(trained["cache"]), "--data-root", str(trained["data"]),
                                    "--subset", "ms3", "--split", "test", "--prompt", "box1", "--sam-checkpoint",
                                    str(sam), "--out", str(out)])
    assert res.exit_code != 0 and "was made with sam: random-init" in res.output, res.output
    assert "does not belong to it" in res.output and not out.exists()


def test_train_with_the_tensorboard_logger(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained["root"] / "run_tb"
    _run("train-fusion", "--cache", trained["cache"], "--data-root", trained["data"], "--run-dir", run, "--epochs", 2,
         "--batch-size", 2, "--depth", 1, "--set", "train.logger=tensorboard")
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for key in ("train_loss", "val_miou", "val_fscore"):  # the same numbers at the same steps as metrics.jsonl
        got = [(e.step, e.value) for e in acc.Scalars(f"epoch/{key}")]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in epochs] and len(got) == 2
