"""Decoding a user's own media as AVSBench samples it: one frame per second, 16 kHz mono audio.

AVSBench sampling, applied to any video: one frame per second, taken 15/16 s into the second, squashed to
224x224 as AVSBench's preprocessing does; audio resampled to 16 kHz mono (PyAV). A folder of frames (one per
second, sorted by name) plus a wav is the other accepted input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stbava.data.clips import DataError

SR = 16000
FRAME_OFFSET_S = 15 / 16  # AVSBench keeps the 16th of 16 samples per second (REFERENCE §1.3)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class MediaInput:
    """One frame per second (uint8 [N,224,224,3]), original-resolution copies for overlays, 16 kHz mono audio."""

    frames: np.ndarray
    originals: list[np.ndarray]
    audio: np.ndarray
    fps_out: float = 1.0


def squash(img: np.ndarray, size: int = 224) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def read_video(path: Path, max_side: int = 640) -> MediaInput:
    """Decode ``path`` with PyAV: frames at l + 15/16 s for every whole second, audio to 16 kHz mono."""
    import av
    from PIL import Image

    try:
        container = av.open(str(path))
    except Exception as e:  # av raises several error types for unreadable inputs
        raise DataError(f"{path}: cannot open video ({type(e).__name__}: {e}); is it a video file?") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        if not container.streams.audio:
            raise DataError(f"{path}: the video has no audio track; stbava segments *sounding* objects and needs "
                            "the sound (or pass a folder of frames plus a wav)")
        picked: list[np.ndarray] = []
        originals: list[np.ndarray] = []
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        def take(frame) -> None:
            img = frame.to_ndarray(format="rgb24")
            picked.append(squash(img))
            scale = max_side / max(img.shape[:2])
            if scale < 1:
                img = np.asarray(Image.fromarray(img).resize(
                    (int(img.shape[1] * scale) // 2 * 2, int(img.shape[0] * scale) // 2 * 2)))
            originals.append(img)

        last, last_t = None, -1.0
        try:
            for frame in container.decode(vstream):
                last_t = float(frame.time) if frame.time is not None else 0.0
                last = frame
                while last_t >= len(picked) + FRAME_OFFSET_S - 1e-6:
                    take(frame)
            # The video may end inside its last second before the 15/16 s sampling point: use its last frame.
            if last is not None and last_t >= len(picked):
                take(last)
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: video stream is corrupt ({e})") from None
        container.seek(0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        chunks = []
        try:
            for af in container.decode(container.streams.audio[0]):
                for out in resampler.resample(af):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: audio stream is corrupt ({e})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    seconds = min(len(picked), int(len(audio) // SR))
    if seconds < 1:
        raise DataError(f"{path}: too short: {len(audio) / SR:.2f} s of audio and {len(picked)} sampled frame(s); "
                        "at least one whole second with sound is needed")
    return MediaInput(np.stack(picked[:seconds]), originals[:seconds], audio[: seconds * SR])


def read_frames_folder(folder: Path, wav: Path | None = None) -> MediaInput:
    """Frames sorted by name (one per second) + a wav (``--audio`` or the folder's only .wav)."""
    from stbava.data.io import load_audio, read_frame

    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise DataError(f"{folder}: no frame images (.png/.jpg) found")
    if wav is None:
        wavs = sorted(folder.glob("*.wav"))
        if len(wavs) != 1:
            raise DataError(f"{folder}: expected exactly one .wav beside the frames (found {len(wavs)}); pass --audio")
        wav = wavs[0]
    audio = load_audio(wav)
    seconds = min(len(frames), int(len(audio) // SR))
    if seconds < 1:
        raise DataError(f"{wav}: shorter than one second of audio")
    imgs = [read_frame(p) for p in frames[:seconds]]
    return MediaInput(np.stack([squash(i) for i in imgs]), imgs, audio[: seconds * SR])
