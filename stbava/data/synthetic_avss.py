"""A small synthetic AVSBench-semantic set in the exact AVSS layout (REFERENCE §13).

Clips are drawn by :func:`stbava.data.synthetic.render_clip` (each class has its own look and its own sound;
who sounds when follows ``synthetic_audio``) and filed by part: ``v1s`` (5 frames, one source; train clips
have only frame 0 labelled), ``v1m`` (5 frames, sources switching) and ``v2`` (10 frames, sources switching),
in turn. A label pixel has the palette colour of the class of the sounding object it shows, and background
(black) elsewhere, so the class of a region can be read from its look but whether it is labelled only from the
audio. ``label2idx.json`` lists background and the synthetic classes (7 classes: ``num_classes: 7``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from stbava.atomic import atomic_write_text
from stbava.data.avss_labels import LABEL2IDX, v2_palette
from stbava.data.clips import AVSS_COLUMNS, AVSS_PARTS, SPLITS, csv_name, subset_dir_name
from stbava.data.synthetic import CLASSES, SynthClip, render_clip
from stbava.data.synthetic_audio import SAMPLE_RATE

__all__ = ["AVSS_SYNTH_CLASSES", "write_synthetic_avss"]

AVSS_SYNTH_CLASSES = ("background", *(c.name for c in CLASSES))
_PART_ORDER = ("v1s", "v1m", "v2")


def class_map(clip: SynthClip) -> np.ndarray:
    """``[T,224,224]`` int64 class index per pixel: class + 1 where a sounding object shows, else 0."""
    out = np.zeros(clip.labels.shape, np.int64)
    for t in range(out.shape[0]):
        for i in np.flatnonzero(clip.sounding[t]):
            out[t][clip.labels[t] == i] = clip.classes[i] + 1
    return out


def _write_clip(root: Path, split: str, part: str, uid: str, rng: np.random.Generator, rules: str) -> list[str]:
    import soundfile as sf

    frames = AVSS_PARTS[part]
    clip = render_clip(rng, "s4" if part == "v1s" else "ms3", frames, rules)
    d = root / part / uid
    (d / "frames").mkdir(parents=True, exist_ok=True)
    (d / "labels_rgb").mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        Image.fromarray(clip.frames[k]).save(d / "frames" / f"{k}.jpg", quality=92)
    colours = v2_palette(len(AVSS_SYNTH_CLASSES))[class_map(clip)]
    for k in ((0,) if part == "v1s" and split == "train" else range(frames)):
        Image.fromarray(colours[k]).save(d / "labels_rgb" / f"{k}.png", compress_level=1)
    sf.write(str(d / "audio.wav"), np.round(clip.wav * 32768).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
    objects = sorted({AVSS_SYNTH_CLASSES[clip.classes[i] + 1] for i in np.flatnonzero(clip.sounding.any(0))})
    return [uid, uid, "0", "0", ";".join(objects), split, part]


def write_synthetic_avss(out: str | Path, clips_per_split: int | Mapping[str, int], seed: int,
                         rules: str = "temporal") -> Path:
    """Write the synthetic AVSS set under ``out/AVSBench-semantic`` and return that folder (the ``--data-root``).

    Files: ``metadata.csv`` (``vid, uid, s_min, s_sec, a_obj, split, label``), ``label2idx.json``, and per clip
    ``<part>/<uid>/frames/<i>.jpg`` (224x224), ``labels_rgb/<i>.png`` (palette colours) and a 16 kHz int16
    ``audio.wav`` of as many seconds as frames. Clip i of a split is part ``v1s``, ``v1m``, ``v2`` for
    i mod 3 = 0, 1, 2 and is drawn from ``default_rng([seed, 2, split index, i])``.
    """
    root = Path(out) / subset_dir_name("avss")
    root.mkdir(parents=True, exist_ok=True)
    counts = dict(clips_per_split) if isinstance(clips_per_split, Mapping) else dict.fromkeys(SPLITS, clips_per_split)
    rows = []
    for si, split in enumerate(SPLITS):
        for i in range(counts.get(split, 0)):
            rng = np.random.default_rng([seed, 2, si, i])
            rows.append(_write_clip(root, split, _PART_ORDER[i % 3], f"syn_{split}_{i:04d}", rng, rules))
    atomic_write_text(root / LABEL2IDX, json.dumps({n: k for k, n in enumerate(AVSS_SYNTH_CLASSES)}) + "\n")
    with (root / csv_name("avss")).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(AVSS_COLUMNS)
        w.writerows(rows)
    return root
