"""Who sounds when, and what the microphone hears: the time half of the synthetic AVSBench.

Two rule sets (``RULES``):

- ``independent`` (the first generator): every second draws its sounding set afresh. S4: one source for
  the whole clip; MS3: a non-empty proper subset per second that changes within the clip. Every second
  can be read on its own, so attending to other seconds carries no information.
- ``temporal`` (the default): clips carry information across seconds the way real videos do.
  - *Steady* clips (S4 always, MS3 with probability ``1 - P_HANDOVER``): one source sounds in all T
    seconds. In ``HIDDEN_COUNT_P`` of them 1 or 2 seconds are *hidden*: *drowned* (the source's tone drops
    by 40 dB under a loud band-limited noise) or a *pause* (no tone, only the quiet floor). As in AVSBench
    S4, the mask still marks the source in a hidden second. A model that listens to one second at a time
    cannot tell which object sounds there; one that attends across the clip's seconds can.
  - *Hand-over* clips (MS3): source A sounds in seconds 1..k, source B in k+1..T, every second clear. Here
    carrying a source over to other seconds is wrong, so the model must also learn when not to.
  The rule can be read from the *set* of the clip's seconds, without their order: ST-BAVA's temporal
  attention has no time position encoding, so an order rule ("copy the previous second") would be
  unlearnable for it. A hidden second never happens in a hand-over clip, so its label is never ambiguous.

Audio segment k spans [0.96k, 0.96(k+1)) s (the last runs to the end of the clip), i.e. exactly VGGish
example k, paired with frame k+1. Level changes ramp over 5 ms inside the segments, so no example hears
another second's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 0.96  # VGGish example length: audio segment k = example k = frame k+1
RULES = ("temporal", "independent")
CLEAR, DROWNED, PAUSE = 0, 1, 2  # per-second hearing condition
HEARING = ("clear", "drowned", "pause")  # their names
# About 23 % of MS3 frames are hidden: enough that a one-second-at-a-time model visibly loses (with 16 %, in the
# first version, the demo's temporal gap was within seed noise), while most clips keep 3 clear seconds to read.
P_HANDOVER = 0.25  # MS3 temporal: share of hand-over clips
HIDDEN_COUNT_P = (0.05, 0.35, 0.6)  # steady clips: P(0, 1, 2 hidden seconds)
P_DROWNED = 0.6  # a hidden second is drowned (else a pause)
DROWN_GAIN = 0.01  # tone gain while drowned (-40 dB)
NOISE_STD = (0.12, 0.2)  # std of the drowning noise (the tone's std is ~0.1-0.2)
NOISE_BAND = (100.0, 4000.0)  # Hz; covers every class's tone and overtones
_RAMP = SAMPLE_RATE // 200  # 5 ms


@dataclass(frozen=True)
class Schedule:
    """Per-second ground truth of one clip.

    Attributes:
        sounding: [T, n] bool, the object is sounding (marked in the mask), heard or not.
        hearing: [T] int8, CLEAR / DROWNED / PAUSE.
    """

    sounding: np.ndarray
    hearing: np.ndarray

    def audible(self) -> np.ndarray:
        """[T, n] bool: sounding in a clear second (what a one-second listener can know)."""
        return self.sounding & (self.hearing == CLEAR)[:, None]


def _independent(rng: np.random.Generator, n_obj: int, frames: int, subset: str) -> np.ndarray:
    states = np.zeros((frames, n_obj), bool)
    if subset == "s4":
        states[:, rng.integers(n_obj)] = True
        return states
    for _ in range(100):  # MS3: resample until the set changes within the clip
        states[:] = False
        for t in range(frames):
            states[t, rng.choice(n_obj, size=int(rng.integers(1, n_obj)), replace=False)] = True
        if frames == 1 or (states != states[0]).any():
            break
    return states


def _temporal(rng: np.random.Generator, n_obj: int, frames: int, subset: str) -> Schedule:
    order = rng.permutation(n_obj)
    sounding = np.zeros((frames, n_obj), bool)
    hearing = np.full(frames, CLEAR, np.int8)
    if subset == "ms3" and frames > 1 and rng.uniform() < P_HANDOVER:
        k = int(rng.integers(1, frames))
        sounding[:k, order[0]] = True
        sounding[k:, order[1]] = True
        return Schedule(sounding, hearing)
    sounding[:, order[0]] = True
    n_hidden = min(int(rng.choice(len(HIDDEN_COUNT_P), p=HIDDEN_COUNT_P)), max(frames - 3, 0))
    for t in rng.choice(frames, size=n_hidden, replace=False):
        hearing[t] = DROWNED if rng.uniform() < P_DROWNED else PAUSE
    return Schedule(sounding, hearing)


def draw_schedule(rng: np.random.Generator, n_obj: int, frames: int, subset: str, rules: str) -> Schedule:
    """Draw the sounding states and hidden seconds of one clip by ``rules`` (module docstring)."""
    if rules == "independent":
        return Schedule(_independent(rng, n_obj, frames, subset), np.full(frames, CLEAR, np.int8))
    if rules == "temporal":
        return _temporal(rng, n_obj, frames, subset)
    raise ValueError(f"unknown synthetic rules {rules!r}; choose one of {', '.join(RULES)}")


def tone(rng: np.random.Generator, f0: float, harmonics: tuple[float, ...], pulse_hz: float,
         t: np.ndarray) -> np.ndarray:
    """A class sound [N]: harmonic series with a little per-clip pitch jitter, gated by the class rhythm."""
    f0 = f0 * rng.uniform(0.98, 1.02)
    theta = np.float32(2 * np.pi * f0) * t + np.float32(rng.uniform(0, 2 * np.pi))
    two_cos, s_prev, s_cur = 2 * np.cos(theta), np.zeros_like(t), np.sin(theta)
    x = np.zeros_like(t)
    for a in harmonics:  # sin(h*theta) by the Chebyshev recurrence: one trig call for all harmonics
        x += a * s_cur
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
    x *= np.float32(1.0 / sum(harmonics))
    if pulse_hz > 0:
        u = (t * np.float32(pulse_hz) + np.float32(rng.uniform())) % np.float32(1.0)
        x *= np.where(u < 0.5, np.sin(np.float32(2 * np.pi) * u) ** 2, np.float32(0.0))
    return x


def gate(levels: np.ndarray, n: int) -> np.ndarray:
    """Per-sample gain [n] from per-segment gains [T], with 5 ms ramps inside the segments."""
    seglen = SEGMENT_SECONDS * SAMPLE_RATE
    levels = np.asarray(levels, np.float32)
    g = levels[np.minimum((np.arange(n) / seglen).astype(int), len(levels) - 1)]
    rise = (np.sin(0.5 * np.pi * np.arange(1, _RAMP + 1) / _RAMP) ** 2).astype(np.float32)
    for k in range(1, len(levels)):
        b, lo, hi = round(k * seglen), levels[k - 1], levels[k]
        if hi > lo:  # ramp up after the boundary
            g[b : b + _RAMP] = lo + (hi - lo) * rise
        elif hi < lo:  # ramp down before it
            g[b - _RAMP : b] = hi + (lo - hi) * rise[::-1]
    return g


def band_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-std noise [n] limited to ``NOISE_BAND`` (FFT mask)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(f < NOISE_BAND[0]) | (f > NOISE_BAND[1])] = 0
    x = np.fft.irfft(spec, n)
    return (x / x.std()).astype(np.float32)


def mix(rng: np.random.Generator, voices: list[tuple[float, tuple[float, ...], float]],
        schedule: Schedule) -> np.ndarray:
    """The clip's waveform [T*16000] float32 in [-1, 1]: quiet floor + gated tones + drowning noise.

    Args:
        voices: per object (f0, harmonics, pulse_hz), in object order.
        schedule: who sounds when and which seconds are hidden.
    """
    frames = len(schedule.hearing)
    n = frames * SAMPLE_RATE
    t = np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE)
    wav = np.float32(rng.uniform(0.01, 0.04)) * rng.standard_normal(n, dtype=np.float32)
    hidden_gain = np.select([schedule.hearing == DROWNED, schedule.hearing == PAUSE], [DROWN_GAIN, 0.0], 1.0)
    for i, (f0, harmonics, pulse_hz) in enumerate(voices):
        if schedule.sounding[:, i].any():
            level = np.float32(rng.uniform(0.15, 0.3))
            wav += level * tone(rng, f0, harmonics, pulse_hz, t) * gate(schedule.sounding[:, i] * hidden_gain, n)
    drowned = schedule.hearing == DROWNED
    if drowned.any():
        wav += np.float32(rng.uniform(*NOISE_STD)) * band_noise(rng, n) * gate(drowned, n)
    return np.clip(wav, -1.0, 32767 / 32768).astype(np.float32)
