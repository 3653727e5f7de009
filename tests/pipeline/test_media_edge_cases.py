"""``predict`` on awkward inputs: streams that start at different times, bad options, mixed or clashing folders,
an input that fails halfway, and the one window layout.

Each test says which part of it failed on the code before these fixes; expectations are written out by hand
from how the inputs were made, never taken from the code under test.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from PIL import Image
from predict_helpers import shade, tiny_checkpoint, tone_hz, write_offset_video

from stbava.cli import main
from stbava.data.clips import DataError
from stbava.data.frames_folder import FramesFolder
from stbava.data.media import is_video_folder
from stbava.data.video import Second, VideoFile
from stbava.pipeline.predict import run as predict_run
from stbava.pipeline.predict.run import PredictOptions, predict_one, run_predict
from stbava.pipeline.predict.windows import SeriesWindows, load_predictor, window_count
from stbava.testing import write_test_video

RATE = 16000


@pytest.fixture(scope="module")
def pred(ckpt):
    return load_predictor(ckpt, device="cpu")


@pytest.fixture(scope="module")
def empty_pred(tmp_path_factory):
    """A predictor whose masks are all empty: its overlay is the input's picture, unpainted."""
    return load_predictor(tiny_checkpoint(tmp_path_factory.mktemp("empty") / "empty.pt", empty_masks=True),
                          device="cpu")


def _tone(wav: np.ndarray, rate: int = RATE) -> int | None:
    """Which second's tone (:func:`tone_hz`) ``wav`` is, or None for silence (or no audio at all)."""
    if len(wav) < rate // 10 or np.sqrt(np.mean(wav ** 2)) < 0.01:
        return None
    hz = np.argmax(np.abs(np.fft.rfft(wav))) * rate / len(wav)
    return round((hz - tone_hz(0)) / (tone_hz(1) - tone_hz(0)))


def _shade_index(img: np.ndarray) -> int:
    """Which second's picture (:func:`shade`) a frame shows."""
    return round((float(img.mean()) - shade(0)) / (shade(1) - shade(0)))


# (audio start, video start) in seconds -> per sampled second: the picture and the tone it must get, by hand.
# Time 0 is the earliest stream start, so second s is [origin + s, origin + s + 1) on the file's timeline.
TIMELINES = {
    "video 0.5 s after audio at 0": ((0.0, 0.5), [0, 1, 2, 3], [0, 1, 2, 3]),
    "video 0.5 s after audio at 1": ((1.0, 1.5), [0, 1, 2, 3], [0, 1, 2, 3]),
    "audio 1 s after video at 0": ((1.0, 0.0), [0, 1, 2, 3], [None, 0, 1, 2]),
}


@pytest.mark.parametrize("case", list(TIMELINES))
def test_frames_and_audio_share_the_files_timeline(tmp_path, case):
    """Each sampled second gets the picture and the sound that play together in the file.

    Failed before (audio was aligned to its own first sample, frames to absolute PTS): "video 0.5 s after audio
    at 1" got pictures [0, 0, 1, 2], "audio 1 s after video" got tones [0, 1, 2, 3].
    """
    (a0, v0), pictures, tones = TIMELINES[case]
    secs = list(VideoFile(write_offset_video(tmp_path / "in.mp4", v0, a0)).seconds())
    assert [s.start for s in secs] == [0.0, 1.0, 2.0, 3.0]
    assert [_shade_index(s.frame) for s in secs] == pictures
    assert [_tone(s.audio[2000:14000]) for s in secs] == tones  # the middle of each second


def test_start_counts_from_the_same_origin(tmp_path):
    """``--start 1`` on a file whose streams start at 1 s (audio) and 1.5 s (video): second 0 is the file's
    second 1 after its start, picture 1 with tone 1. Failed before (absolute PTS for --start): picture 0, tone 0."""
    video = write_offset_video(tmp_path / "in.mp4", 1.5, 1.0)
    secs = list(VideoFile(video, start=1.0).seconds())
    assert [(_shade_index(s.frame), _tone(s.audio[2000:14000])) for s in secs][:2] == [(1, 1), (2, 2)]


def _decode(path: Path) -> tuple[list[tuple[float, np.ndarray]], float, np.ndarray, int]:
    """Frames ``(time, rgb)``, the time of the first audio sample, the audio (channel 0) and its rate."""
    with av.open(str(path)) as c:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        got = list(c.decode(audio=0))
        rate = c.streams.audio[0].codec_context.sample_rate
    return frames, float(got[0].time), np.concatenate([f.to_ndarray()[0] for f in got]), rate


@pytest.mark.parametrize("case", list(TIMELINES))
def test_the_overlay_keeps_the_offset_between_picture_and_sound(empty_pred, tmp_path, case):
    """In the overlay, 0.25 s after picture j appears the sound is the one the input plays then.

    By hand: picture j starts at ``v0 + j`` on the input's timeline, so 0.25 s later its tone is
    ``floor(v0 - a0 + j + 0.25)`` (silence below 0). Failed before (the overlay wrote the input's first audio
    sample at 0): "video 0.5 s after audio at 1" heard [1, 2, 3, None], "audio 1 s after video" [0, 1, 2, 3].
    """
    (a0, v0), _, _ = TIMELINES[case]
    video = write_offset_video(tmp_path / "in.mp4", v0, a0)
    predict_one(empty_pred, video, tmp_path / "o", PredictOptions(progress=False))
    frames, audio_t0, wav, rate = _decode(tmp_path / "o" / "overlay.mp4")
    first_shown = {}
    for t, img in frames:
        first_shown.setdefault(_shade_index(img), t)
    assert sorted(first_shown) == [0, 1, 2, 3]
    heard = []
    for j in range(4):
        mid = round((first_shown[j] + 0.25 - audio_t0) * rate)
        heard.append(_tone(wav[mid - round(0.15 * rate): mid + round(0.15 * rate)], rate))
    want = [math.floor(v0 - a0 + j + 0.25) for j in range(4)]
    assert heard == [k if k >= 0 else None for k in want]


def _frames_folder(folder: Path, seconds: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(seconds):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(folder / f"f{i:02d}.png")
    sf.write(folder / "audio.wav", np.zeros(seconds * RATE, np.float32), RATE)
    return folder


@pytest.mark.parametrize("start,duration", [(-1, None), (-0.5, 2), (0, 0), (1, -2)])
def test_a_frames_folder_checks_start_and_duration_like_a_video(tmp_path, start, duration):
    """Failed before: a negative --start sliced frames from the end; --duration <= 0 was reported as "--start 0 is
    past its 3 s"."""
    folder = _frames_folder(tmp_path / "frames")
    with pytest.raises(DataError, match="--start must be >= 0|--duration must be > 0") as got:
        FramesFolder(folder, start=start, duration=duration)
    assert str(folder) in str(got.value)
    with pytest.raises(DataError, match="--start must be >= 0|--duration must be > 0"):
        VideoFile(tmp_path / "never-opened.mp4", start=start, duration=duration)
    assert [s.start for s in FramesFolder(folder, start=1, duration=1).seconds()] == [0.0]  # a valid range


def _cli(*args) -> object:
    return CliRunner().invoke(main, [*map(str, args)])


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    write_test_video(folder / "a.mp4", 1, fps=4, size=(32, 24))
    write_test_video(folder / "b.mp4", 1, fps=4, size=(32, 24))
    return folder


def _no_model(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict_run, "load_predictor", refuse)


@pytest.mark.parametrize("option,value", [("--temporal-stride", 0.3), ("--temporal-stride", 0), ("--max-side", 0),
                                          ("--max-side", -4), ("--start", -1), ("--duration", 0),
                                          ("--duration", -3)])
def test_a_bad_option_fails_before_the_model_loads(ckpt, two_videos, tmp_path, monkeypatch, option, value):
    """With a checkpoint that does not exist, and with a real one that must not be loaded: the error is the
    option's, once, not one per video of the folder.

    Failed before: the missing checkpoint was reported first (click); with the real one the model was loaded
    before a bad --temporal-stride was found (then reported once per video), --max-side 0 was ignored and a
    negative one gave a 2x2 overlay.
    """
    _no_model(monkeypatch)
    for checkpoint in (tmp_path / "missing.pt", ckpt):
        res = _cli("predict", "--checkpoint", checkpoint, "--input", two_videos, "--out", tmp_path / "o",
                   "--no-progress", option, value)
        assert res.exit_code == 1, (res.output, res.exception)
        assert res.output.count(f"{option} must") == 1, res.output
        assert "checkpoint" not in res.output and "Traceback" not in res.output
        assert not (tmp_path / "o").exists()


def test_audio_for_videos_is_refused_before_the_model_loads(ckpt, two_videos, tmp_path, monkeypatch):
    """Failed before: --audio with videos was silently ignored (after loading the model)."""
    wav = tmp_path / "extra.wav"
    sf.write(wav, np.zeros(RATE, np.float32), RATE)
    _no_model(monkeypatch)
    res = _cli("predict", "--checkpoint", ckpt, "--input", two_videos, "--out", tmp_path / "o", "--audio", wav)
    assert res.exit_code == 1 and res.output.count("--audio is for a folder of frames") == 1, res.output


def test_good_options_reach_the_checkpoint(two_videos, tmp_path):
    """The counterpart: valid options get as far as the checkpoint, which is read only after them."""
    res = _cli("predict", "--checkpoint", tmp_path / "missing.pt", "--input", two_videos, "--out", tmp_path / "o",
               "--max-side", 2, "--temporal-stride", 0.25, "--start", 0, "--duration", 1)
    assert res.exit_code == 1 and "checkpoint not found" in res.output, res.output


def test_two_videos_with_the_same_name_are_refused(tmp_path, monkeypatch):
    """``a.mp4`` and ``a.mov`` would both write ``out/a/``. Failed before: both ran, the second overwrote the first."""
    folder = tmp_path / "videos"
    write_test_video(folder / "a.mp4", 1, fps=4, size=(32, 24))
    write_test_video(folder / "a.mov", 1, fps=4, size=(32, 24))
    write_test_video(folder / "b.mp4", 1, fps=4, size=(32, 24))
    _no_model(monkeypatch)
    res = _cli("predict", "--checkpoint", tmp_path / "missing.pt", "--input", folder, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "a.mov and a.mp4" in res.output and "rename" in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_a_stray_image_does_not_turn_videos_into_frames(ckpt, two_videos, tmp_path, caplog):
    """Failed before: one .png made the folder a frames folder ("expected exactly one .wav")."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for v in two_videos.iterdir():
        (folder / v.name).write_bytes(v.read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "cover.png")
    with caplog.at_level(logging.WARNING):
        report = run_predict(ckpt, folder, tmp_path / "o", device="cpu", options=PredictOptions(progress=False))
    assert [Path(s["input"]).name for s in report["results"]] == ["a.mp4", "b.mp4"] and not report["failed"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a", "b", "batch.json"]
    assert any("cover.png" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_folder_is_what_most_of_its_files_are(tmp_path, caplog):
    """Failed before: a stray video in a frames folder was not reported, and a tie was taken as frames."""
    frames = _frames_folder(tmp_path / "frames")
    write_test_video(frames / "stray.mp4", 1, fps=4, size=(32, 24))
    with caplog.at_level(logging.WARNING):
        assert not is_video_folder(frames)
    assert any("stray.mp4" in r.getMessage() for r in caplog.records)
    tie = tmp_path / "tie"
    write_test_video(tie / "a.mp4", 1, fps=4, size=(32, 24))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tie / "b.png")
    with pytest.raises(DataError, match="as many videos as images"):
        is_video_folder(tie)


def _fail_on_second_window(pred, monkeypatch) -> None:
    calls = []
    real = pred.window_probs

    def window_probs(secs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(secs)

    monkeypatch.setattr(pred, "window_probs", window_probs)


def test_a_failed_input_leaves_nothing(pred, tmp_path, monkeypatch):
    """It fails in its second window, after the first window's 5 masks. Failed before: those 5 PNGs stayed."""
    video = write_test_video(tmp_path / "in.mp4", 10, fps=4, size=(32, 24))
    _fail_on_second_window(pred, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        predict_one(pred, video, tmp_path / "o", PredictOptions(progress=False))
    assert not (tmp_path / "o").exists()


def test_a_failed_rerun_keeps_the_previous_outputs(pred, tmp_path, monkeypatch):
    """Failed before: the re-run's first masks replaced the earlier run's, beside its old summary.json."""
    video = write_test_video(tmp_path / "in.mp4", 10, fps=4, size=(32, 24))
    predict_one(pred, video, tmp_path / "o", PredictOptions(progress=False))
    before = {p.relative_to(tmp_path / "o"): p.read_bytes() for p in (tmp_path / "o").rglob("*") if p.is_file()}
    assert len([p for p in before if p.suffix == ".png"]) == 10
    assert json.loads(before[Path("summary.json")])["masks"] == str(tmp_path / "o" / "masks")
    _fail_on_second_window(pred, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        predict_one(pred, video, tmp_path / "o", PredictOptions(progress=False, temporal_stride=0.5))
    after = {p.relative_to(tmp_path / "o"): p.read_bytes() for p in (tmp_path / "o").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")] == []


# seconds in a series -> windows of T=5 as (the seconds it holds, the seconds it writes), written out by hand
LAYOUTS = {
    3: [([0, 1, 2], [0, 1, 2])],  # shorter than T: one window, padded by the model
    5: [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])],
    7: [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), ([2, 3, 4, 5, 6], [5, 6])],  # the last aligned to the end
    10: [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9])],
    11: [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]), ([6, 7, 8, 9, 10], [10])],
}


@pytest.mark.parametrize("seconds", list(LAYOUTS))
def test_the_window_layout(seconds):
    """One layout (SeriesWindows), the progress count built on it; this part passed before too (a guard)."""
    series, got = SeriesWindows(5), []
    blank = np.zeros((1, 1, 3), np.uint8)
    for i in range(seconds):
        got.append(series.push(Second(float(i), blank, np.zeros(RATE, np.float32))))
    got.append(series.flush())
    got = [([int(s.start) for s in held], [int(s.start) for s in new]) for held, new in filter(None, got)]
    assert got == LAYOUTS[seconds]
    assert window_count(seconds + 0.5, [0.0], 5) == len(LAYOUTS[seconds])


def test_the_layout_and_the_time_tolerance_are_defined_once():
    """Failed before: predict.windows() repeated SeriesWindows' layout; video.py and overlay.py each had _EPS."""
    from stbava.data import video
    from stbava.pipeline.predict import overlay
    from stbava.pipeline.predict import windows as predict

    assert not hasattr(predict, "windows")
    assert not hasattr(overlay, "_EPS") and not hasattr(video, "_EPS")
    assert overlay.TIME_EPS is video.TIME_EPS
