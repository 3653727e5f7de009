"""Validate an AVSBench tree before spending hours on feature extraction (`stbava check-data`).

Every file the index expects is opened and fully decoded with the same readers extraction uses, so
"check-data passes" means "extraction will not fail on input". Problems are collected, not raised,
so one run lists everything that is missing or broken.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from stbava.data.clips import FRAMES_PER_CLIP, SPLITS, Clip, DataError, load_clips, resolve_subset_root
from stbava.data.io import load_audio, read_frame, read_mask


@dataclass
class SplitCounts:
    """Clips of one split listed in the CSV, and how many of them have at least one problem."""

    clips: int = 0
    bad_clips: int = 0


@dataclass
class DataCheckReport:
    """Result of ``check_data``.

    Attributes:
        root: the resolved subset folder (the one holding the metadata CSV).
        subset: 's4' or 'ms3'.
        splits: per split (train/val/test) clip counts.
        problems: (path, problem) for every missing or unreadable frame, wav or mask, in CSV order.
        files_checked: number of files opened.
    """

    root: Path
    subset: str
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """Human-readable summary: one line per split, then one per problem."""
        out = [f"{self.subset} data at {self.root}: {self.files_checked} files checked"]
        for split, c in self.splits.items():
            out.append(f"  {split:5s}: {c.clips} clips, {c.bad_clips} with problems")
        for path, problem in self.problems:
            out.append(f"  {path}: {problem}")
        out.append("OK" if self.ok else f"{len(self.problems)} problem(s) in {self.bad_clips} clip(s)")
        return out

    @property
    def bad_clips(self) -> int:
        return sum(c.bad_clips for c in self.splits.values())


def _check_file(path: Path, reader: Callable[[Path], object]) -> tuple[Path, str] | None:
    if not path.is_file():
        return path, "missing"
    try:
        reader(path)
    except DataError as e:
        msg = str(e)
        prefix = f"{path}: "
        return path, msg.removeprefix(prefix)
    return None


def _check_clip(clip: Clip, mask_reader: Callable[[Path], object] = read_mask) -> list[tuple[Path, str]]:
    jobs: list[tuple[Path, Callable[[Path], object]]] = [(p, read_frame) for p in clip.frame_paths]
    jobs.append((clip.wav_path, load_audio))
    jobs += [(p, mask_reader) for p in clip.mask_paths]
    problems = [r for p, fn in jobs if (r := _check_file(p, fn)) is not None]
    return problems + _frame_size_problems(clip, skip={p for p, _ in problems})


def _frame_size_problems(clip: Clip, skip: set[Path]) -> list[tuple[Path, str]]:
    """A clip's frames are encoded as one stack, so each must have the first frame's size (header read only)."""
    from PIL import Image

    sizes = []
    for p in clip.frame_paths:
        if p not in skip:  # already reported as missing/unreadable
            with Image.open(p) as im:
                sizes.append((p, im.size))
    if not sizes:
        return []
    w0, h0 = sizes[0][1]
    fix = "re-extract the frames of this clip at one size"
    return [(p, f"frame is {w}x{h} but the clip's frame {sizes[0][0].name} is {w0}x{h0}; {fix}")
            for p, (w, h) in sizes if (w, h) != (w0, h0)]


def check_data(
    data_root: str | Path,
    subset: str,
    frames: int = FRAMES_PER_CLIP,
    workers: int | None = None,
    progress: bool = True,
    avss_parts: str | Iterable[str] | None = None,
) -> DataCheckReport:
    """Open every frame, wav and mask of every clip listed in the subset's metadata CSV.

    Args:
        data_root: the subset folder or the ``avsbench_data`` folder above it.
        subset: 's4', 'ms3' or 'avss' (colour labels checked against the palette and ``label2idx.json``).
        frames: frames per clip (AVSBench: 5; unused for AVSS, whose clips have 5 or 10).
        workers: threads decoding files (PNG/wav decoding releases the GIL); default: CPU count, at most 8.
        progress: show a tqdm bar over clips.
        avss_parts: AVSS label sets to check (``"v1s,v1m,v2"``; None = all).

    Returns:
        The report; ``report.ok`` is False when anything is missing or unreadable.

    Raises:
        DataError: the metadata CSV itself is missing or malformed (nothing else can be checked then).
    """
    root = resolve_subset_root(data_root, subset)
    clips = load_clips(root, subset, frames=frames, avss_parts=avss_parts)
    check_clip: Callable[[Clip], list[tuple[Path, str]]] = _check_clip
    if subset == "avss":
        from stbava.data.avss_labels import read_colour_label, read_label2idx

        reader = partial(read_colour_label, num_classes=len(read_label2idx(root)))
        check_clip = partial(_check_clip, mask_reader=reader)
    report = DataCheckReport(root=root, subset=subset, splits={s: SplitCounts() for s in SPLITS})
    n_workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as ex:
        results = ex.map(check_clip, clips)
        for clip, problems in tqdm(zip(clips, results), total=len(clips), desc="check-data", unit="clip",
                                   disable=not progress):
            counts = report.splits[clip.split]
            counts.clips += 1
            report.files_checked += len(clip.all_paths())
            if problems:
                counts.bad_clips += 1
                report.problems.extend(problems)
    return report
