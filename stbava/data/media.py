"""Which reader an input needs: a video file, a folder of frames + wav, or a folder of videos (batch)."""

from __future__ import annotations

from pathlib import Path

from stbava.data.clips import DataError
from stbava.data.frames_folder import FramesFolder
from stbava.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoFile


def open_media(path: str | Path, audio: str | Path | None = None, start: float = 0.0,
               duration: float | None = None) -> VideoFile | FramesFolder:
    """A :class:`VideoFile`, or a :class:`~stbava.data.frames_folder.FramesFolder` for a directory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"input not found: {p}")
    if p.is_dir():
        return FramesFolder(p, Path(audio) if audio else None, start, duration)
    return VideoFile(p, start, duration)


def is_video_folder(path: str | Path) -> bool:
    """A folder of video files (batch input), as opposed to a folder of frames."""
    p = Path(path)
    if not p.is_dir():
        return False
    names = [f.suffix.lower() for f in p.iterdir() if f.is_file()]
    return any(s in VIDEO_SUFFIXES for s in names) and not any(s in IMAGE_SUFFIXES for s in names)


def folder_videos(path: str | Path) -> list[Path]:
    """The video files of a batch folder, sorted by name."""
    return sorted(f for f in Path(path).iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
