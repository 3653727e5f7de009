"""``stbava app``: driven by Gradio's own client over HTTP on 127.0.0.1 (upload a video, get an overlay back);
its work dir is gone once it closes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from predict_helpers import free_port

from stbava.testing import write_test_video


def _frames_and_audio(path: str | Path) -> tuple[int, float]:
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        return frames, sum(f.samples for f in c.decode(a)) / a.codec_context.sample_rate


def test_gradio_client_round_trip(ckpt, tmp_path, monkeypatch):
    """Also: closing the app removes what it wrote in --work-dir (failed before: every request's folder stayed)."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from stbava.pipeline.predict.app import API_NAME, launch_app

    video = write_test_video(tmp_path / "clip.mp4", 3, fps=8, size=(80, 64))
    port = free_port()
    app = launch_app(ckpt, port=port, work_dir=tmp_path / "work", device="cpu", block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "got"))
        overlay, gallery, archive = client.predict(handle_file(str(video)), "1", 0, 0, api_name=f"/{API_NAME}")
        assert len(list((tmp_path / "work").rglob("overlay.mp4"))) == 1  # the request wrote there
    finally:
        app.close()
    assert list((tmp_path / "work").iterdir()) == []  # the user's folder stays, the app's own is gone
    overlay_path = overlay["video"] if isinstance(overlay, dict) else overlay
    assert _frames_and_audio(overlay_path)[0] == _frames_and_audio(video)[0] == 24
    assert _frames_and_audio(overlay_path)[1] == pytest.approx(3.0, abs=2048 / 16000)
    assert [g["caption"].split(":")[0] for g in gallery] == ["0-1 s", "1-2 s", "2-3 s"]
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert names == ["clip_1.png", "clip_2.png", "clip_3.png", "summary.json"]
        summary = json.loads(z.read("summary.json"))
        z.extract("clip_2.png", tmp_path / "unzipped")
    png = np.asarray(Image.open(tmp_path / "unzipped" / "clip_2.png")) > 127
    assert summary["per_second"][1]["foreground_fraction"] == pytest.approx(png.mean(), abs=1e-9)
    shown = np.asarray(Image.open(gallery[1]["image"] if isinstance(gallery[1]["image"], str)
                                  else gallery[1]["image"]["path"])) > 127
    assert (shown == png).all()  # the page shows the same masks as the download


def test_a_blocking_launch_removes_its_temporary_work_dir(ckpt, tmp_path, monkeypatch):
    """No --work-dir: a new temporary folder, removed when the (blocking) server stops. Failed before: it stayed.

    ``Blocks.launch`` is replaced by one that returns at once, as a real one does after Ctrl-C.
    """
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    gr = pytest.importorskip("gradio")
    import tempfile

    from stbava.pipeline.predict.app import launch_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.extend(tmp_path.glob("stbava_app_*")))
    launch_app(ckpt, device="cpu", block=True)
    assert len(seen) == 1 and not seen[0].exists()  # it existed while serving, and is gone now
    assert list(tmp_path.glob("stbava_app_*")) == []
