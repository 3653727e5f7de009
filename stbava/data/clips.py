"""AVSBench clip index: the metadata CSV + directory layout of REFERENCE §1 turned into typed records.

The CSV is read **by position** (S4: col 0 id, col 2 category, col 3 split; MS3: col 0 id, col 1 split)
because the official loaders do and the header names are not documented. Frame and mask indices on disk
are 1-based; S4 ``train`` has only the frame-1 mask.

AVSBench-semantic (``avss``, REFERENCE §13) is read by column name (``metadata.csv``: ``vid, uid, s_min,
s_sec, a_obj, split, label``), with clips under ``<root>/<label>/<uid>/``: ``frames/<i>.jpg``,
``labels_rgb/<i>.png`` and ``audio.wav``, indices 0-based. Its clips have 5 (``v1s``, ``v1m``) or 10 (``v2``)
frames; ``v1s`` train clips have only frame 0 annotated. Their colour labels are read by
:mod:`stbava.data.avss_labels`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SUBSETS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")
FRAMES_PER_CLIP = 5
AVSS_PARTS = {"v1s": 5, "v1m": 5, "v2": 10}  # AVSS label set -> frames per clip
AVSS_MAX_FRAMES = 10  # config.py MASK_NUM: every AVSS clip is padded to 10 frames
AVSS_COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")

_SUBSET_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSBench-semantic"}
_CSV_NAMES = {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}


class DataError(ValueError):
    """Bad or missing dataset input; the message names the file and the fix."""


@dataclass(frozen=True)
class Clip:
    """One AVSBench clip: T frames, one wav, and the annotated masks.

    ``mask_frames`` holds the 0-based indices of the frames that ``mask_paths`` annotate, in order
    (``(0,)`` for S4 and AVSS-v1s train, ``(0, 1, 2, 3, 4)`` elsewhere, up to 9 for AVSS v2).
    ``category`` is the S4 class folder, or for AVSS the part the clip is filed under (v1s / v1m / v2);
    ``num_frames`` is 5, or 10 for AVSS v2 clips.
    """

    id: str
    subset: str
    split: str
    category: str | None
    frame_paths: tuple[Path, ...]
    wav_path: Path
    mask_paths: tuple[Path, ...]
    mask_frames: tuple[int, ...]

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    def all_paths(self) -> list[Path]:
        return [*self.frame_paths, self.wav_path, *self.mask_paths]


def subset_dir_name(subset: str) -> str:
    return _SUBSET_DIRS[_check_subset(subset)]


def csv_name(subset: str) -> str:
    return _CSV_NAMES[_check_subset(subset)]


def _check_subset(subset: str) -> str:
    if subset not in SUBSETS:
        raise DataError(f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}")
    return subset


def resolve_subset_root(data_root: str | Path, subset: str) -> Path:
    """Accept either the subset folder (holding the CSV) or the ``avsbench_data`` folder above it."""
    root = Path(data_root)
    name = csv_name(subset)
    for cand in (root, root / subset_dir_name(subset)):
        if (cand / name).is_file():
            return cand
    raise DataError(
        f"no {name} under {root} or {root / subset_dir_name(subset)}: point --data-root at the AVSBench "
        f"'{subset_dir_name(subset)}' folder (or its parent), or create synthetic data with "
        f"`stbava synth OUT --subset {subset}`"
    )


def _clip_paths(root: Path, subset: str, split: str, vid: str, category: str | None, frames: int):
    if subset == "s4":
        if category is None:
            raise DataError(f"S4 clip {vid} has no category")
        d = root / "s4_data"
        frame_dir = d / "visual_frames" / split / category / vid
        frame_paths = tuple(frame_dir / f"{vid}_{k}.png" for k in range(1, frames + 1))
        wav = d / "audio_wav" / split / category / f"{vid}.wav"
        mask_dir = d / "gt_masks" / split / category / vid
        mask_frames = (0,) if split == "train" else tuple(range(frames))
    else:
        d = root / "ms3_data"
        frame_dir = d / "visual_frames" / vid
        frame_paths = tuple(frame_dir / f"{vid}.mp4_{k}.png" for k in range(1, frames + 1))
        wav = d / "audio_wav" / split / f"{vid}.wav"
        mask_dir = d / "gt_masks" / split / vid
        mask_frames = tuple(range(frames))
    mask_paths = tuple(mask_dir / f"{vid}_{k + 1}.png" for k in mask_frames)
    return frame_paths, wav, mask_paths, mask_frames


def parse_avss_parts(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"v1s,v1m"`` (or a sequence) -> ``("v1s", "v1m")``; None or empty = all three parts."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else (text or ())) if p.strip()]
    bad = [p for p in parts if p not in AVSS_PARTS]
    if bad:
        raise DataError(f"unknown AVSS label set(s) {', '.join(map(repr, bad))}: use v1s, v1m and/or v2")
    return tuple(parts) or tuple(AVSS_PARTS)


def read_avss_metadata(root: Path) -> list[tuple[str, str, str]]:
    """Rows ``(uid, split, label)`` of an AVSS ``metadata.csv`` (columns by name), in file order."""
    path = root / _CSV_NAMES["avss"]
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("uid", "split", "label") if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{path}: no column(s) {', '.join(missing)}; an AVSS metadata.csv has the columns "
                            f"{', '.join(AVSS_COLUMNS)}; re-download it")
        rows: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for lineno, row in enumerate(reader, start=2):
            uid, split, label = (str(row.get(k) or "").strip() for k in ("uid", "split", "label"))
            if not uid:
                raise DataError(f"{path}:{lineno}: empty uid")
            if split not in SPLITS:
                raise DataError(f"{path}:{lineno}: unknown split {split!r} for clip {uid} (expected train/val/test)")
            if label not in AVSS_PARTS:
                raise DataError(f"{path}:{lineno}: unknown label {label!r} for clip {uid} (expected v1s/v1m/v2)")
            if uid in seen:
                raise DataError(f"{path}:{lineno}: duplicate clip uid {uid!r}; remove one of its rows")
            seen.add(uid)
            rows.append((uid, split, label))
    return rows


def _avss_clip(root: Path, uid: str, split: str, label: str) -> Clip:
    d = root / label / uid
    n = AVSS_PARTS[label]
    mask_frames = (0,) if (label == "v1s" and split == "train") else tuple(range(n))
    return Clip(uid, "avss", split, label, tuple(d / "frames" / f"{k}.jpg" for k in range(n)), d / "audio.wav",
                tuple(d / "labels_rgb" / f"{k}.png" for k in mask_frames), mask_frames)


def read_metadata(data_root: str | Path, subset: str) -> list[tuple[str, str, str | None]]:
    """Rows of ``(video_id, split, category)`` from the subset's metadata CSV, in file order."""
    root = resolve_subset_root(data_root, subset)
    if subset == "avss":
        return [(uid, split, label) for uid, split, label in read_avss_metadata(root)]
    path = root / csv_name(subset)
    need = 4 if subset == "s4" else 2
    rows: list[tuple[str, str, str | None]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty metadata file")
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < need:
                raise DataError(
                    f"{path}:{lineno}: expected at least {need} columns "
                    f"({'name,start_time,category,split' if subset == 's4' else 'name,split'}), got {len(row)}; "
                    "re-download the metadata CSV"
                )
            vid = row[0].strip()
            if subset == "s4":
                category, split = row[2].strip(), row[3].strip()
            else:
                category, split = None, row[1].strip()
            if split not in SPLITS:
                raise DataError(f"{path}:{lineno}: unknown split {split!r} for clip {vid} (expected train/val/test)")
            if not vid:
                raise DataError(f"{path}:{lineno}: empty video id")
            rows.append((vid, split, category))
    seen: dict[str, int] = {}
    for i, (vid, _, _) in enumerate(rows):
        if vid in seen:
            raise DataError(f"{path}: duplicate clip id {vid!r} (rows {seen[vid] + 2} and {i + 2}); remove one")
        seen[vid] = i
    return rows


def load_clips(
    data_root: str | Path,
    subset: str,
    splits: Iterable[str] | None = None,
    frames: int = FRAMES_PER_CLIP,
    avss_parts: str | Iterable[str] | None = None,
) -> list[Clip]:
    """All clips of ``subset`` in the given splits (all when None), in CSV order. Paths are not checked here.

    For AVSS, ``frames`` is unused (a clip has the frames of its part) and ``avss_parts`` picks the label
    sets (``"v1s,v1m,v2"``; None = all).
    """
    root = resolve_subset_root(data_root, subset)
    wanted: Sequence[str] = tuple(splits) if splits else SPLITS
    for s in wanted:
        if s not in SPLITS:
            raise DataError(f"unknown split {s!r}: use train, val or test")
    parts = parse_avss_parts(avss_parts) if subset == "avss" else ()
    clips = []
    for vid, split, category in read_metadata(root, subset):
        if split not in wanted:
            continue
        if subset == "avss":
            if category in parts:
                clips.append(_avss_clip(root, vid, split, str(category)))
            continue
        fp, wav, mp, mf = _clip_paths(root, subset, split, vid, category, frames)
        clips.append(Clip(vid, subset, split, category, fp, wav, mp, mf))
    return clips


def load_train_val(data_root: str | Path, subset: str, frames: int = FRAMES_PER_CLIP,
                   avss_parts: str | Iterable[str] | None = None) -> tuple[list[Clip], list[Clip]]:
    """The train and val clips of ``subset`` (val may be empty); a training run without train clips is an error."""
    train = load_clips(data_root, subset, ["train"], frames=frames, avss_parts=avss_parts)
    if not train:
        raise DataError(f"no train clips for subset {subset} under {data_root}")
    return train, load_clips(data_root, subset, ["val"], frames=frames, avss_parts=avss_parts)
