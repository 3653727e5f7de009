"""Helpers of the pipeline tests: a tiny, freshly built stage-two checkpoint, a free port, the CLI in process."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from click.testing import CliRunner

from stbava.checkpoint import save_checkpoint
from stbava.cli import main
from stbava.config import load_config
from stbava.encoders.fingerprint import encoder_fingerprint
from stbava.pipeline.core.net import build_fusion_net


def tiny_checkpoint(path: Path, empty_masks: bool = False) -> Path:
    """A freshly built stage-two checkpoint (tiny encoders, one ST-BAVA block): untrained but deterministic.

    ``empty_masks``: the decoder's mask hypernetworks output zeros, so every logit is 0, every probability
    0.5 and every mask empty (0.5 is not > 0.5): the overlay must then equal the input picture.
    """
    cfg = load_config(None, {"frames": 5, "encoder": {"name": "tiny"}, "model": {"depth": 1}})
    weights = build_fusion_net(cfg).state_dict()
    if empty_masks:
        for k in weights:
            if "output_hypernetworks_mlps" in k and ".layers.2." in k:
                weights[k] = torch.zeros_like(weights[k])
    save_checkpoint(path, kind="fusion", cfg=cfg, weights=weights,
                    fingerprint=encoder_fingerprint(cfg.encoder, cfg.frames))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for the app tests' servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shade(j: int) -> int:
    """Grey level of the picture shown in second ``j`` of a :func:`write_offset_video` video."""
    return 20 + 40 * j


def tone_hz(k: int) -> float:
    """Pitch of second ``k`` of a :func:`write_offset_video` video's audio."""
    return 300.0 + 200.0 * k


def write_offset_video(path: Path, video_start: float, audio_start: float, seconds: int = 4, fps: int = 16,
                       rate: int = 16000) -> Path:
    """An MP4 whose video stream starts at ``video_start`` s and its audio at ``audio_start`` s (PTS).

    Second ``j`` of the picture (from the video's own start) is flat grey :func:`shade` (j); second ``k`` of
    the sound (from the audio's own start) is a sine of :func:`tone_hz` (k); both last ``seconds`` s, so
    which sound plays with which picture tells where each stream sits on the container's timeline. At 16 fps
    a frame falls exactly on AVSBench's sampling point (15/16 s into a second), so the sampled picture is
    that second's, not the next one's.
    """
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(seconds * rate) / rate
    wav = (0.3 * np.sin(2 * np.pi * (300 + 200 * t.astype(int)) * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "mono"
        for i in range(seconds * fps):
            fr = av.VideoFrame.from_ndarray(np.full((32, 32, 3), shade(i // fps), np.uint8), format="rgb24")
            fr.pts = i + round(video_start * fps)  # in 1/fps, the stream's time base
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        for i in range(0, len(wav), 1024):
            fr = av.AudioFrame.from_ndarray(wav[None, i:i + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = rate, i + round(audio_start * rate)
            for p in aus.encode(fr):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    return path


def run_cli(*args: object) -> str:
    """``stbava ARGS`` in this process (exceptions propagate); asserts exit code 0 and returns the output."""
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output
