"""A folder of frames (one per second, sorted by name) plus a wav: the same reader interface as a video file.

Frame ``i`` (0-based, in name order) is second ``[i, i+1)``; the wav is read whole (16 kHz mono), which is fine
for the short clips such folders hold. ``--start`` / ``--duration`` count whole seconds here and are checked
as a video's are (:func:`stbava.data.video.check_range`: ``--start`` >= 0, ``--duration`` > 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from stbava.data.clips import DataError
from stbava.data.video import IMAGE_SUFFIXES, SR, AudioTrack, Second, check_range, squash


class FramesFolder:
    """Frames sorted by name (one per second) + a wav (``audio`` or the folder's only .wav)."""

    def __init__(self, folder: Path, wav: Path | None = None, start: float = 0.0,
                 duration: float | None = None) -> None:
        from stbava.data.io import load_audio, read_frame

        self.path = folder
        check_range(start, duration, folder)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: no frame images (.png/.jpg) found")
        if wav is None:
            wavs = sorted(folder.glob("*.wav"))
            if len(wavs) != 1:
                raise DataError(f"{folder}: expected exactly one .wav beside the frames (found {len(wavs)}); "
                                "pass --audio")
            wav = wavs[0]
        self.wav = load_audio(wav)
        seconds = min(len(files), int(len(self.wav) // SR))
        if seconds < 1:
            raise DataError(f"{wav}: shorter than one second of audio")
        first = int(start)
        last = seconds if duration is None else min(seconds, first + int(np.ceil(duration)))
        if first >= last:
            raise DataError(f"{folder}: --start {start} is past its {seconds} s")
        self.files, self.first = files[first:last], first
        self.fps, self.start, self.length = Fraction(1), float(first), float(last - first)
        self.height, self.width = read_frame(self.files[0]).shape[:2]
        self.audio_rate, self.audio_layout = SR, "mono"

    def _audio(self) -> np.ndarray:
        return self.wav[self.first * SR: (self.first + len(self.files)) * SR]

    def seconds(self, offsets: Sequence[float] = (0.0,)) -> Iterator[Second]:
        """One sample per frame; sub-second offsets need a video (a folder has one frame per second)."""
        from stbava.data.io import read_frame

        if any(o for o in offsets):
            raise DataError(f"{self.path}: --temporal-stride needs a video; a frames folder has one frame per second")
        wav = self._audio()
        for i, p in enumerate(self.files):
            yield Second(float(i), squash(read_frame(p)), wav[i * SR:(i + 1) * SR])

    def frames(self, size: tuple[int, int] | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Every frame ``(second, uint8 [H,W,3])``, resized (bilinear) to ``size = (w, h)`` when given."""
        from PIL import Image

        from stbava.data.io import read_frame

        for i, p in enumerate(self.files):
            img = read_frame(p)
            if size and (img.shape[1], img.shape[0]) != tuple(size):
                img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
            yield float(i), img

    def audio_track(self) -> AudioTrack:
        wav = self._audio()
        chunks = (wav[None, i:i + SR].astype(np.float32) for i in range(0, len(wav), SR))
        return AudioTrack(SR, "mono", chunks)
