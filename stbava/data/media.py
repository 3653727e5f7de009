"""Which reader an input needs: a video file, a folder of frames + wav, or a folder of videos (batch).

A folder's kind is what most of its media files are: more videos than images make it a folder of videos
(each predicted on its own), otherwise it is a folder of frames. The files of the other kind (and, in a
folder of videos, any other file) are not used, and a warning names them; as many videos as images is an
error, since either reading could be meant.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stbava.data.clips import DataError
from stbava.data.frames_folder import FramesFolder
from stbava.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoFile

log = logging.getLogger(__name__)
_NAMED = 10  # a warning names at most this many files


def open_media(path: str | Path, audio: str | Path | None = None, start: float = 0.0,
               duration: float | None = None) -> VideoFile | FramesFolder:
    """A :class:`VideoFile`, or a :class:`~stbava.data.frames_folder.FramesFolder` for a directory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"input not found: {p}")
    if p.is_dir():
        return FramesFolder(p, Path(audio) if audio else None, start, duration)
    return VideoFile(p, start, duration)


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def is_video_folder(path: str | Path) -> bool:
    """A folder of video files (batch input), as opposed to a folder of frames: whichever most files are.

    Logs a warning naming the files that will not be used; raises DataError on a tie.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    files = _files(p)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if videos and len(videos) == len(images):
        raise DataError(f"{p}: as many videos as images ({len(videos)} each), so it is neither clearly a folder "
                        "of videos nor a folder of frames: put the videos and the frames in separate folders")
    kind_is_videos = len(videos) > len(images)
    used = VIDEO_SUFFIXES if kind_is_videos else IMAGE_SUFFIXES | {".wav"}
    unused = [f for f in files if f.suffix.lower() not in used]
    if unused and (videos or images):
        names = ", ".join(f.name for f in unused[:_NAMED]) + (", ..." if len(unused) > _NAMED else "")
        log.warning("%s: a folder of %s; %d other file(s) not used: %s", p,
                    f"{len(videos)} videos" if kind_is_videos else f"{len(images)} frames", len(unused), names)
    return kind_is_videos


def folder_videos(path: str | Path) -> list[Path]:
    """The video files of a batch folder, sorted by name."""
    return [f for f in _files(Path(path)) if f.suffix.lower() in VIDEO_SUFFIXES]
