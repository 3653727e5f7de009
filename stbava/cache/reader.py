"""Read side of the cache: clip id -> numpy arrays, safe to hand to DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stbava.cache.base import (
    DAMAGED_CHUNK_ERRORS,
    REBUILD_HINT,
    Storage,
    check_fingerprint,
    detect_backend,
    get_backend,
    load_manifest,
)
from stbava.cache.manifest import AUDIO, IMAGE, LOG_MEL, CacheError, CacheManifest

Frames = slice | Sequence[int] | None


class CacheReader:
    """Embeddings of the done clips of one store.

    The storage handle is opened on first read and reopened in a new process, and it is dropped when the
    reader is pickled, so a reader built in the main process works inside DataLoader workers (fork or
    spawn) without ever sharing an HDF5 handle. Done flags are read once (``refresh()`` re-reads them).
    """

    def __init__(self, path: Path, backend: type[Storage], manifest: CacheManifest) -> None:
        self.path = path
        self.backend = backend.name
        self.manifest = manifest
        self._storage: Storage | None = None
        self._pid = -1
        self._done: dict[str, np.ndarray] | None = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The encoder fingerprint the embeddings were made with (a JSON-able dict)."""
        return self.manifest.fingerprint

    @property
    def frames(self) -> int:
        return self.manifest.frames

    @property
    def emb_shape(self) -> tuple[int, ...]:
        """``(256, h, w)`` of one frame's image embedding."""
        return self.manifest.emb_shape

    @property
    def has_log_mel(self) -> bool:
        return self.manifest.has_log_mel

    def _store(self) -> Storage:
        if self._storage is None or self._pid != os.getpid():
            self._storage = get_backend(self.backend)(self.path, writable=False)
            self._pid = os.getpid()
        return self._storage

    def _done_flags(self) -> dict[str, np.ndarray]:
        if self._done is None:
            self._done = {s: np.asarray(self._store().done(s), dtype=bool) for s in self.manifest.splits}
        return self._done

    def refresh(self) -> None:
        """Re-read the done flags (e.g. while an extraction is still filling the cache)."""
        self._done = None

    def splits(self) -> list[str]:
        """Splits listed in the cache, in manifest order."""
        return list(self.manifest.splits)

    def clip_ids(self, split: str) -> list[str]:
        """Done clips of ``split`` in manifest (row) order; empty for a split the cache does not hold."""
        ids = self.manifest.splits.get(split, [])
        flags = self._done_flags().get(split)
        if flags is None:
            return []
        return [cid for cid, ok in zip(ids, flags) if ok]

    def is_done(self, clip_id: str) -> bool:
        where = self.manifest.locate(clip_id)
        return where is not None and bool(self._done_flags()[where[0]][where[1]])

    def _read(self, clip_id: str, name: str, frames: Frames) -> np.ndarray:
        where = self.manifest.locate(clip_id)
        if where is None:
            raise CacheError(f"clip {clip_id!r} is not in cache {self.path}; extract it with "
                             f"{REBUILD_HINT.format(path=self.path)} (add its --split)")
        if not self._done_flags()[where[0]][where[1]]:
            self.refresh()  # it may have been finished since the flags were read
            if not self._done_flags()[where[0]][where[1]]:
                raise CacheError(f"clip {clip_id!r} is not extracted yet in cache {self.path}; finish the "
                                 f"extraction with {REBUILD_HINT.format(path=self.path)} (it resumes)")
        sel: slice | list[int] = slice(None) if frames is None else (
            frames if isinstance(frames, slice) else [int(f) for f in frames])
        try:
            return self._store().read(where[0], name, where[1], sel)
        except CacheError:
            raise
        except DAMAGED_CHUNK_ERRORS as e:  # a chunk that no longer decodes (truncated, overwritten, ...)
            raise CacheError(f"cache {self.path}: {name} data of clip {clip_id!r} is damaged ({type(e).__name__}: "
                             f"{str(e)[:120]}); re-extract the damaged clips in place with `stbava extract-features "
                             f"--cache {self.path} --verify ...` (the other clips are kept)") from None

    def image_embeddings(self, clip_id: str, frames: Frames = None) -> np.ndarray:
        """float16 ``[T,256,h,w]`` (or the selected frames only; each frame is its own chunk)."""
        return self._read(clip_id, IMAGE, frames)

    def audio_embeddings(self, clip_id: str, frames: Frames = None) -> np.ndarray:
        """float32 ``[T,128]`` VGGish embeddings, one per 0.96 s example paired with frame k."""
        return self._read(clip_id, AUDIO, frames)

    def log_mels(self, clip_id: str, frames: Frames = None) -> np.ndarray:
        """float32 ``[T,1,96,64]`` VGGish input examples; only in caches built with ``--store-log-mel``."""
        if not self.has_log_mel:
            raise CacheError(f"cache {self.path} has no log-mels; rebuild it with `stbava extract-features "
                             "--store-log-mel` into a new path")
        return self._read(clip_id, LOG_MEL, frames)

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
        self._storage = None

    def __enter__(self) -> CacheReader:  # noqa: PYI034 (never subclassed; typing.Self needs py3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_storage"], state["_pid"] = None, -1
        return state

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(ids)}" for s, ids in self.manifest.splits.items())
        return f"CacheReader({str(self.path)!r}, backend={self.backend}, clips: {counts})"


def open_cache(path: str | Path, expected_fingerprint: Mapping[str, Any] | None = None) -> CacheReader:
    """Open a feature cache for reading; the backend is detected from the store.

    Args:
        path: the store (a ``.zarr`` directory or an ``.h5`` file).
        expected_fingerprint: when given, the cache must have been built with exactly these encoders.

    Raises:
        CacheError: missing/foreign/damaged store, or a fingerprint mismatch (naming the rebuild command).
    """
    p = Path(path)
    cls = detect_backend(p)
    storage = cls(p, writable=False)
    try:
        manifest = load_manifest(storage, cls, p)
    finally:
        storage.close()  # nothing stays open in the parent before DataLoader workers fork
    check_fingerprint(manifest, expected_fingerprint, p, writing=False)
    return CacheReader(p, cls, manifest)
