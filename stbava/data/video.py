"""Decoding a user's own video as AVSBench samples it, streamed: memory does not grow with the video's length.

AVSBench sampling, applied to any video: one frame per second, taken 15/16 s into the second, squashed to
224x224 as AVSBench's preprocessing does; audio resampled to 16 kHz mono (PyAV). :meth:`VideoFile.seconds`
yields these samples one second at a time (optionally also for seconds that start at extra sub-second
offsets, ``--temporal-stride``); :meth:`VideoFile.frames` and :meth:`VideoFile.audio_track` give every frame
and the original audio for the overlay video. Times are in seconds from ``start`` (``--start``) and stop
after ``duration`` (``--duration``). A folder of frames plus a wav is the other input
(:mod:`stbava.data.frames_folder`); :func:`stbava.data.media.open_media` picks the reader.

One timeline for both streams: time 0 is the *earliest start of the video and audio streams* (their
presentation timestamps), and frame times and audio samples are both measured from it, so a file whose
video starts later than its sound (or the other way round, or whose streams both start late, as in phone
and screen recordings or MPEG-TS) keeps them in sync. Frame ``t`` is shown ``t`` seconds after that origin;
audio that starts after the origin is preceded by silence, so audio sample ``i`` is at ``i / rate`` s too.
``--start`` counts from the origin as well. The overlay writes its audio from 0 and its frames at these
times, so it has the input's offset between picture and sound.
"""

from __future__ import annotations

import itertools
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
TIME_EPS = 1e-6  # seconds: timestamps this close count as equal (float PTS of frames, sampling points, steps)


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


def check_range(start: float, duration: float | None, subject: str | Path | None = None) -> None:
    """``--start`` >= 0 and ``--duration`` > 0 (None: to the end), for every reader; DataError naming the fix."""
    bad = []
    if not start >= 0:  # also NaN
        bad.append(f"--start must be >= 0 seconds from the beginning (got {start})")
    if duration is not None and not duration > 0:
        bad.append(f"--duration must be > 0 seconds (got {duration}); leave it out to read to the end")
    if bad:
        raise DataError((f"{subject}: " if subject else "") + "; ".join(bad))


def silence(layout: str, samples: int, rate: int) -> Iterator[np.ndarray]:
    """``samples`` zeros as planar float32 chunks ``[channels, <= rate]`` (one second at most each)."""
    import av

    channels = len(av.AudioLayout(layout).channels)
    for i in range(0, samples, rate):
        yield np.zeros((channels, min(rate, samples - i)), np.float32)


def timeline_origin(container) -> float:
    """Seconds of the earliest start of the first video and audio streams: time 0 of this module's timeline."""
    starts = [float(s.start_time * s.time_base) for s in (container.streams.video[0], container.streams.audio[0])
              if s.start_time is not None and s.time_base is not None]
    if starts:
        return min(starts)
    return container.start_time / 1e6 if container.start_time else 0.0


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
        check_range(start, duration, self.path)
        self.start, self.duration = float(start), duration
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
            self.origin = timeline_origin(c)  # absolute PTS (s) of time 0
            total = float(c.duration / 1e6) if c.duration else None  # FFmpeg: from the earliest start to the end
        left = None if total is None else max(total - self.start, 0.0)
        self.length = left if duration is None else (duration if left is None else min(duration, left))

    def _in_range(self, t: float) -> bool:
        return t >= self.start - TIME_EPS and (self.duration is None or t < self.start + self.duration - TIME_EPS)

    def _video_frames(self) -> Iterator[tuple[float, object]]:
        """(time from ``start``, av.VideoFrame) for every decoded frame in range (times on the shared timeline)."""
        import av

        with _open(self.path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            if self.start > 0:
                c.seek(int((self.origin + self.start) / vs.time_base), stream=vs)
            try:
                for fr in c.decode(vs):
                    t = float(fr.time) - self.origin if fr.time is not None else 0.0
                    if t < self.start - TIME_EPS:
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

        left = None if self.duration is None else round(self.duration * rate)
        with _open(self.path) as c:
            try:
                for chunk in self._audio_from_start(c, rate, layout):
                    if left is not None:
                        chunk = chunk[:, :left]
                        left -= chunk.shape[1]
                    if chunk.shape[1]:
                        yield np.ascontiguousarray(chunk, dtype=np.float32)
                    if left == 0:
                        return
            except av.error.FFmpegError as e:
                raise DataError(f"{self.path}: audio stream is corrupt ({e})") from None

    def _audio_from_start(self, c, rate: int, layout: str) -> Iterator[np.ndarray]:
        """Resampled chunks whose first sample is at ``start`` on the shared timeline (to the end of the audio).

        Audio that starts later than ``start`` is preceded by silence; samples before it (the seek lands on
        an earlier frame) are dropped.
        """
        import av

        astream = c.streams.audio[0]
        if self.start > 0:
            c.seek(int((self.origin + self.start) / astream.time_base), stream=astream)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        skip = None
        for af in itertools.chain(c.decode(astream), [None]):  # None: flush the resampler
            if skip is None and af is not None:
                t0 = float(af.time) - self.origin if af.time is not None else self.start
                skip = round((self.start - t0) * rate)  # < 0: the audio starts that many samples after start
                yield from silence(layout, -skip, rate)
                skip = max(skip, 0)
            for out in resampler.resample(af):
                x = out.to_ndarray()
                cut = min(skip or 0, x.shape[1])
                skip = (skip or 0) - cut
                yield x[:, cut:]

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
            while t >= nxt + FRAME_OFFSET_S - TIME_EPS:
                sec = audio.take(nxt)
                if sec is None:
                    return
                img = squash(fr.to_ndarray(format="rgb24")) if img is None else img
                yield Second(nxt, img, sec)
                nxt = next(starts)
            last = (t, fr)
        while last is not None and last[0] >= nxt - TIME_EPS:  # the video ends before this second's sampling point
            sec = audio.take(nxt)
            if sec is None:
                return
            yield Second(nxt, squash(last[1].to_ndarray(format="rgb24")), sec)
            nxt = next(starts)
