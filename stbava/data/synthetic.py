"""A small synthetic AVSBench: same on-disk layout, so the same readers, cache and metrics serve both.

Why it is built this way: the task has to *need* audio and time, otherwise a model that ignores either
looks fine on it (ENV-NOTES §7). Each clip shows 2-3 objects of different classes; every class has its
own look (colour + shape) and its own sound (harmonic tone with a class fundamental, overtone profile and
pulse rhythm), mixed with noise. Which of the visible objects is sounding can only be read from the audio,
and who sounds when follows the rules of ``synthetic_audio`` ('temporal' by default: a source keeps
sounding while its sound is drowned or paused for a second or two, or hands over to another; or the first
generator's 'independent' per-second draw). The sounding objects are drawn at random among the visible
ones, so every class appears both as source and as distractor.

Each frame's mask is the union of the visible pixels of the objects sounding in that frame's audio
segment (heard or not, as AVSBench marks a source in every frame). Objects drift a few pixels per frame
over a textured, noisy background. Besides the AVSBench files, ``synthetic_truth.json`` in the subset root
records each clip's objects, sounding states and hearing conditions, for analysis (no reader needs it).
Everything is drawn from ``numpy.random.default_rng`` seeded per clip, so output is deterministic.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from stbava.atomic import atomic_write_text
from stbava.data.clips import SPLITS, SUBSETS, DataError, csv_name, subset_dir_name
from stbava.data.synthetic_audio import HEARING, RULES, SAMPLE_RATE, SEGMENT_SECONDS, draw_schedule, mix

log = logging.getLogger(__name__)

__all__ = ["CLASSES", "RULES", "SEGMENT_SECONDS", "TRUTH_FILE", "SynthClip", "render_clip", "write_synthetic"]

SIZE = 224
TRUTH_FILE = "synthetic_truth.json"
_Z_RLE = 3  # zlib strategy: about as small as the default for noisy frames, faster to write


@dataclass(frozen=True)
class SynthClass:
    """Look and sound of one object class."""

    name: str
    color: tuple[int, int, int]
    shape: str
    f0: float  # fundamental (Hz)
    harmonics: tuple[float, ...]  # relative amplitudes of harmonics 1..n
    pulse_hz: float  # amplitude-pulse rate; 0 = continuous tone


CLASSES: tuple[SynthClass, ...] = (
    SynthClass("red_circle", (215, 45, 40), "circle", 200.0, (1.0, 0.5, 0.3, 0.2), 0.0),
    SynthClass("green_square", (45, 190, 70), "square", 270.0, (1.0, 0.1, 0.6, 0.1, 0.4), 2.0),
    SynthClass("blue_triangle", (50, 80, 220), "triangle", 370.0, (1.0, 0.7), 3.0),
    SynthClass("yellow_diamond", (230, 210, 40), "diamond", 500.0, (1.0,), 5.0),
    SynthClass("magenta_ring", (210, 50, 200), "ring", 690.0, (1.0, 0.4, 0.2), 0.0),
    SynthClass("cyan_cross", (40, 205, 215), "cross", 950.0, (1.0, 0.3), 8.0),
)


@dataclass
class SynthClip:
    """One rendered clip (in memory).

    Attributes:
        classes: class index of each object, in painting order.
        sounding: [T, n_objects] bool, which object sounds in each frame's audio segment (heard or not).
        hearing: [T] int8, per second CLEAR / DROWNED / PAUSE (``synthetic_audio``).
        frames: uint8 [T,224,224,3] RGB.
        labels: int8 [T,224,224] visible object index per pixel, -1 for background.
        masks: bool [T,224,224] union of the sounding objects' visible pixels.
        wav: float32 [frames * 16000] mono waveform in [-1, 1].
    """

    classes: list[int]
    sounding: np.ndarray
    hearing: np.ndarray
    frames: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    wav: np.ndarray


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels of one object, computed inside its bounding box only: (box slices, bool mask of the box)."""
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, SIZE)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, SIZE)
    box = (slice(y0, y1), slice(x0, x1))
    return box, _shape_pixels(shape, _XX[box] - cx, _YY[box] - cy, r)


def _shape_pixels(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * r
    if shape == "diamond":
        return ax + ay <= 1.15 * r
    if shape == "triangle":
        return (dy >= -0.9 * r) & (dy <= 0.75 * r) & (ax <= 0.7 * (dy + 0.9 * r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((ax <= 0.33 * r) & (ay <= r)) | ((ay <= 0.33 * r) & (ax <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _place(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """Centres [n,2] (x, y), kept inside the frame and apart, so objects rarely occlude each other."""
    centres = np.zeros((len(radii), 2), np.float32)
    for i, r in enumerate(radii):
        for _ in range(200):
            c = rng.uniform(r + 4, SIZE - r - 4, size=2)
            if all(np.hypot(*(c - centres[j])) > r + radii[j] + 12 for j in range(i)):
                break
        centres[i] = c
    return centres


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(60, 160, size=3).astype(np.float32)
    blobs = rng.normal(0.0, 22.0, size=(6, 6, 3)).astype(np.float32)
    low = np.stack(
        [np.asarray(Image.fromarray(blobs[..., c]).resize((SIZE, SIZE), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    return base + low


def render_clip(rng: np.random.Generator, subset: str, frames: int = 5, rules: str = "temporal") -> SynthClip:
    """Draw one clip: objects, their sounding states, T frames, T masks and the waveform.

    Args:
        rng: source of randomness (one per clip keeps clips independent of each other).
        subset: 's4' (one source + silent distractors) or 'ms3' (sources switching per frame).
        frames: frames per clip; the audio lasts ``frames`` seconds.
        rules: who sounds when: 'temporal' or 'independent' (``synthetic_audio`` docstring).

    Returns:
        The rendered ``SynthClip``.
    """
    n_obj = int(rng.integers(2, 4))
    classes = [int(c) for c in rng.choice(len(CLASSES), size=n_obj, replace=False)]
    radii = rng.uniform(24, 40, size=n_obj).astype(np.float32)
    centres = _place(rng, radii)
    angle = rng.uniform(0, 2 * np.pi, size=n_obj)
    vel = np.stack([np.cos(angle), np.sin(angle)], 1) * rng.uniform(1.5, 4.0, size=(n_obj, 1))
    colors = np.array([CLASSES[c].color for c in classes], np.float32) + rng.uniform(-15, 15, size=(n_obj, 3))
    schedule = draw_schedule(rng, n_obj, frames, subset, rules)
    sounding = schedule.sounding

    bg = _background(rng)
    noise = 7.0 * rng.standard_normal(size=(SIZE + 16, SIZE + 16, 3), dtype=np.float32)
    shade = 1.0 + 0.12 * ((_XX + _YY) / SIZE - 1.0)  # mild lighting gradient over objects
    imgs = np.empty((frames, SIZE, SIZE, 3), np.uint8)
    labels = np.full((frames, SIZE, SIZE), -1, np.int8)
    for t in range(frames):
        img = bg.copy()
        lab = labels[t]
        for i in range(n_obj):
            cx, cy = centres[i] + vel[i] * t
            box, m = _shape_mask(CLASSES[classes[i]].shape, cx, cy, radii[i])
            lab[box][m] = i
            img[box][m] = colors[i] * shade[box][m][:, None]
        oy, ox = rng.integers(0, 16, size=2)
        img += noise[oy : oy + SIZE, ox : ox + SIZE]
        imgs[t] = np.clip(img, 0, 255).astype(np.uint8)
    masks = np.zeros((frames, SIZE, SIZE), bool)
    for t in range(frames):
        for i in np.flatnonzero(sounding[t]):
            masks[t] |= labels[t] == i

    voices = [(CLASSES[c].f0, CLASSES[c].harmonics, CLASSES[c].pulse_hz) for c in classes]
    wav = mix(rng, voices, schedule)
    return SynthClip(classes, sounding, schedule.hearing, imgs, labels, masks, wav)


def _write_png(arr: np.ndarray, path: Path) -> None:
    """uint8 [H,W,3] -> RGB PNG, uint8 [H,W] -> 8-bit grey ('L') PNG; fast compression (noise compresses badly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1, compress_type=_Z_RLE)


def _write_clip(root: Path, subset: str, split: str, vid: str, clip: SynthClip) -> tuple[list[str], dict]:
    """Write one clip's files in the AVSBench layout; returns its metadata CSV row and its truth record."""
    import soundfile as sf

    frames = clip.frames.shape[0]
    if subset == "s4":
        source = int(np.flatnonzero(clip.sounding[0])[0])
        cat = CLASSES[clip.classes[source]].name
        d = root / "s4_data"
        frame_paths = [d / "visual_frames" / split / cat / vid / f"{vid}_{k}.png" for k in range(1, frames + 1)]
        wav_path = d / "audio_wav" / split / cat / f"{vid}.wav"
        mask_dir = d / "gt_masks" / split / cat / vid
        mask_ks = [1] if split == "train" else list(range(1, frames + 1))
        row = [vid, "0", cat, split]
    else:
        d = root / "ms3_data"
        frame_paths = [d / "visual_frames" / vid / f"{vid}.mp4_{k}.png" for k in range(1, frames + 1)]
        wav_path = d / "audio_wav" / split / f"{vid}.wav"
        mask_dir = d / "gt_masks" / split / vid
        mask_ks = list(range(1, frames + 1))
        row = [vid, split]
    for k, p in enumerate(frame_paths):
        _write_png(clip.frames[k], p)
    for k in mask_ks:
        _write_png(clip.masks[k - 1].astype(np.uint8) * 255, mask_dir / f"{vid}_{k}.png")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(wav_path), np.round(clip.wav * 32768).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
    truth = {"classes": [CLASSES[c].name for c in clip.classes], "sounding": clip.sounding.astype(int).tolist(),
             "hearing": [HEARING[h] for h in clip.hearing]}
    return row, truth


def write_synthetic(out: str | Path, subset: str, clips_per_split: int | Mapping[str, int], seed: int,
                    frames: int = 5, rules: str = "temporal", progress: bool = False) -> Path:
    """Write a synthetic dataset in the exact AVSBench layout (REFERENCE §1) under ``out``.

    Files: the metadata CSV, 224x224 RGB PNG frames, 16 kHz int16 mono wav of ``frames`` seconds, and
    0/255 mode-'L' mask PNGs (S4 train: frame-1 mask only). Existing files of the same names are
    overwritten. Clip ids are ``syn_<split>_<i>``; S4 clips are filed under the sounding object's class.
    Clips are rendered and written by a few threads (PNG encoding releases the GIL); the output does not
    depend on the thread count because every clip has its own seeded generator.

    Args:
        out: folder that plays the role of ``avsbench_data``.
        subset: 's4' or 'ms3'.
        clips_per_split: clips written for each of train, val and test (or a {split: count} mapping).
        seed: base seed; clip i of split s uses ``default_rng([seed, subset, s, i])``.
        frames: frames (and seconds of audio) per clip.
        rules: who sounds when, 'temporal' or 'independent' (``synthetic_audio``).
        progress: a tqdm bar over the clips written (stderr).

    Returns:
        The subset root (``out/Single-source`` or ``out/Multi-sources``), usable as ``--data-root``.
    """
    if rules not in RULES:
        raise DataError(f"unknown synthetic rules {rules!r}; choose one of {', '.join(RULES)}")
    root = Path(out) / subset_dir_name(subset)
    root.mkdir(parents=True, exist_ok=True)
    counts = dict(clips_per_split) if isinstance(clips_per_split, Mapping) else dict.fromkeys(SPLITS, clips_per_split)
    jobs = [(si, split, i) for si, split in enumerate(SPLITS) for i in range(counts.get(split, 0))]

    def job(j: tuple[int, str, int]) -> tuple[list[str], dict]:
        si, split, i = j
        rng = np.random.default_rng([seed, SUBSETS.index(subset), si, i])
        return _write_clip(root, subset, split, f"syn_{split}_{i:04d}", render_clip(rng, subset, frames, rules))

    with ThreadPoolExecutor(max_workers=min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)) as ex:
        written = list(tqdm(ex.map(job, jobs), total=len(jobs), desc="synth", unit="clip", disable=not progress,
                            leave=False))
    log.info("wrote %d synthetic %s clips (%s rules, seed %d) under %s", len(jobs), subset, rules, seed, root)
    rows = [row for row, _ in written]
    truth = {"rules": rules, "seed": seed, "clips": {row[0]: t for row, t in written}}
    atomic_write_text(root / TRUTH_FILE, json.dumps(truth) + "\n")
    header = ["name", "start_time", "category", "split"] if subset == "s4" else ["name", "split"]
    with (root / csv_name(subset)).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root
