"""Decoding a user's own video as AVSBench samples it, streamed: memory does not grow with the video's length.

AVSBench sampling, applied to any video: one frame per second, taken 15/16 s into the second, squashed to
224x224 as AVSBench's preprocessing does; audio resampled to 16 kHz mono (PyAV). :meth:`VideoFile.seconds`
yields these samples one second at a time (optionally also for seconds that start at extra sub-second
offsets, ``--temporal-stride``); :meth:`VideoFile.frames` and :meth:`VideoFile.audio_track` give every frame
and the original audio for the overlay video. Times are in seconds from ``start`` (``--start``) and stop
after ``duration`` (``--duration``). A folder of frames plus a wav is the other input
(:mod:`stbava.data.frames_folder`); :func:`stbava.data.media.open_media` picks the reader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stbava.data.clips import DataError

SR = 16000
FRAME_OFFSET_S = 15 / 16  # AVSBench keeps the 16th of 16 samples per second (REFERENCE §1.3)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_EPS = 1e-6


@dataclass
class Second:
    """One AVSBench sample: the second ``[start, start + 1)``, its 224x224 frame and its 16 kHz mono audio."""

    start: float  # seconds from the input's start (whole seconds, plus the temporal-stride offset)
    frame: np.ndarray  # uint8 [224,224,3], the frame shown at start + 15/16 s
    audio: np.ndarray  # float32 [16000]


@dataclass
class AudioTrack:
    """The input's own audio, for muxing into the overlay: planar float chunks ``[channels, n]``."""

    rate: int
    layout: str
    chunks: Iterator[np.ndarray]


def squash(img: np.ndarray, size: int = 224) -> np.ndarray:
    """AVSBench's frame preprocessing: bilinear resize to ``size x size`` (aspect ratio not kept)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def sample_starts(offsets: Sequence[float]) -> Iterator[float]:
    """``0+o0, 0+o1, ..., 1+o0, ...``: the start of every sampled second, in time order (offsets in [0, 1))."""
    k = 0
    while True:
        for o in sorted(offsets):
            yield k + o
        k += 1


class AudioWindow:
    """Pulls 16 kHz mono chunks on demand; ``take(start)`` returns the 16000 samples from ``start`` on.

    Only samples from the last requested start on are kept (starts must not decrease), so memory is about
    one second of audio whatever the length of the input.
    """

    def __init__(self, chunks: Iterator[np.ndarray]) -> None:
        self.chunks = chunks
        self.buf = np.zeros(0, np.float32)
        self.base = 0  # sample index of buf[0]

    def take(self, start: float) -> np.ndarray | None:
        i0 = round(start * SR)
        while self.base + len(self.buf) < i0 + SR:
            chunk = next(self.chunks, None)
            if chunk is None:
                return None  # the audio ends inside this second
            self.buf = np.concatenate([self.buf, chunk.reshape(-1).astype(np.float32)])
        drop = max(i0 - self.base, 0)
        self.buf, self.base = self.buf[drop:], self.base + drop
        return self.buf[:SR].copy()


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except Exception as e:  # noqa: BLE001 - av raises several error types for unreadable inputs
        raise DataError(f"{path}: cannot open video ({type(e).__name__}: {e}); is it a video file?") from None


class VideoFile:
    """A video with an audio track, read window by window (each iterator opens its own decoder)."""

    def __init__(self, path: str | Path, start: float = 0.0, duration: float | None = None) -> None:
        self.path = Path(path)
        self.start, self.duration = float(start), duration
        if self.start < 0 or (duration is not None and duration <= 0):
            raise DataError(f"--start must be >= 0 and --duration > 0 (got {start}, {duration})")
        with _open(self.path) as c:
            if not c.streams.video:
                raise DataError(f"{self.path}: no video stream")
            if not c.streams.audio:
                raise DataError(f"{self.path}: the video has no audio track; stbava segments *sounding* objects "
                                "and needs the sound (or pass a folder of frames plus a wav)")
            vs, aus = c.streams.video[0], c.streams.audio[0]
            self.fps = Fraction(vs.average_rate or vs.guessed_rate or 25)
            self.width, self.height = vs.codec_context.width, vs.codec_context.height
            self.audio_rate, self.audio_layout = aus.codec_context.sample_rate, aus.codec_context.layout.name
            total = float(c.duration / 1e6) if c.duration else None
        left = None if total is None else max(total - self.start, 0.0)
        self.length = left if duration is None else (duration if left is None else min(duration, left))

    def _in_range(self, t: float) -> bool:
        return t >= self.start - _EPS and (self.duration is None or t < self.start + self.duration - _EPS)

    def _video_frames(self) -> Iterator[tuple[float, object]]:
        """(time from ``start``, av.VideoFrame) for every decoded frame in range."""
        import av

        with _open(self.path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            if self.start > 0:
                c.seek(int(self.start / vs.time_base), stream=vs)
            try:
                for fr in c.decode(vs):
                    t = float(fr.time) if fr.time is not None else 0.0
                    if t < self.start - _EPS:
                        continue
                    if not self._in_range(t):
                        return
                    yield t - self.start, fr
            except av.error.FFmpegError as e:
                raise DataError(f"{self.path}: video stream is corrupt ({e})") from None

    def frames(self, size: tuple[int, int] | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Every frame in range: ``(time, uint8 [H,W,3])``, scaled to ``size = (w, h)`` when given."""
        for t, fr in self._video_frames():
            kw = {"width": size[0], "height": size[1]} if size else {}
            yield t, fr.to_ndarray(format="rgb24", **kw)

    def _audio(self, rate: int, layout: str) -> Iterator[np.ndarray]:
        """Planar float32 chunks ``[channels, n]`` of the range, resampled to ``rate`` / ``layout``."""
        import av

        with _open(self.path) as c:
            astream = c.streams.audio[0]
            if self.start > 0:
                c.seek(int(self.start / astream.time_base), stream=astream)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            skip, left = None, None if self.duration is None else round(self.duration * rate)
            try:
                for af in c.decode(astream):
                    if skip is None:  # samples before --start in the first decoded frame after the seek
                        t0 = float(af.time) if af.time is not None else 0.0
                        skip = max(round((self.start - t0) * rate), 0)
                    for out in [*resampler.resample(af)]:
                        chunk, skip, left = _trim(out.to_ndarray(), skip, left)
                        if chunk.shape[1]:
                            yield chunk
                        if left == 0:
                            return
                for out in resampler.resample(None):
                    chunk, skip, left = _trim(out.to_ndarray(), skip or 0, left)
                    if chunk.shape[1]:
                        yield chunk
            except av.error.FFmpegError as e:
                raise DataError(f"{self.path}: audio stream is corrupt ({e})") from None

    def audio_track(self) -> AudioTrack:
        """The input's audio at its own rate and channel layout (for the overlay video)."""
        return AudioTrack(self.audio_rate, self.audio_layout, self._audio(self.audio_rate, self.audio_layout))

    def seconds(self, offsets: Sequence[float] = (0.0,)) -> Iterator[Second]:
        """AVSBench samples of every whole second in range, for each offset in ``offsets``, in time order.

        A second is sampled at the first frame at or after ``start + 15/16``; if the video ends inside the
        second before that point, its last frame is used. Sampling stops where the audio runs out.
        """
        audio = AudioWindow(c[0] for c in self._audio(SR, "mono"))
        starts = sample_starts(offsets)
        nxt = next(starts)
        last: tuple[float, object] | None = None
        for t, fr in self._video_frames():
            img = None
            while t >= nxt + FRAME_OFFSET_S - _EPS:
                sec = audio.take(nxt)
                if sec is None:
                    return
                img = squash(fr.to_ndarray(format="rgb24")) if img is None else img
                yield Second(nxt, img, sec)
                nxt = next(starts)
            last = (t, fr)
        while last is not None and last[0] >= nxt - _EPS:  # the video ends before this second's sampling point
            sec = audio.take(nxt)
            if sec is None:
                return
            yield Second(nxt, squash(last[1].to_ndarray(format="rgb24")), sec)
            nxt = next(starts)


def _trim(chunk: np.ndarray, skip: int, left: int | None) -> tuple[np.ndarray, int, int | None]:
    """Drop ``skip`` leading samples and keep at most ``left`` (None: all); returns the updated counters."""
    cut = min(skip, chunk.shape[1])
    chunk, skip = chunk[:, cut:], skip - cut
    if left is not None:
        chunk = chunk[:, :left]
        left -= chunk.shape[1]
    return np.ascontiguousarray(chunk, dtype=np.float32), skip, left
