"""Write side of the cache: open a store for writing (new or resumed), write whole clips, then flag them done.

Everything here runs with the writer lock already held (or joined) by the caller:
:func:`~stbava.cache.create.create_cache` takes it for one process or rank 0, and
:func:`~stbava.cache.shards.join_cache` joins it for the other ranks of a torchrun job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stbava.cache.base import (
    DAMAGED_CHUNK_ERRORS,
    Storage,
    check_fingerprint,
    create_store,
    detect_backend,
    load_manifest,
    new_manifest,
    validate_arrays,
)
from stbava.cache.lock import WriterLock
from stbava.cache.manifest import CacheError, CacheManifest, array_specs

log = logging.getLogger(__name__)


class CacheWriter:
    """Holds the writer lock and the store open; use as a context manager.

    ``write_clip`` writes a clip's arrays, makes them durable, and only then sets its done flag, so a run
    killed at any point leaves every clip either done with complete data or not done (and redone on resume).
    """

    def __init__(self, path: Path, storage: Storage, manifest: CacheManifest, lock: WriterLock) -> None:
        self.path = path
        self.manifest = manifest
        self._storage = storage
        self._lock = lock
        self._done = {s: np.array(storage.done(s), dtype=bool) for s in manifest.splits}

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest.fingerprint

    def _where(self, clip_id: str) -> tuple[str, int]:
        where = self.manifest.locate(clip_id)
        if where is None:
            raise CacheError(f"clip {clip_id!r} is not listed in cache {self.path}; pass it to create_cache")
        return where

    def is_done(self, clip_id: str) -> bool:
        split, row = self._where(clip_id)
        return bool(self._done[split][row])

    def num_done(self) -> int:
        return int(sum(int(f.sum()) for f in self._done.values()))

    def write_clip(self, clip_id: str, image_emb: np.ndarray, audio_emb: np.ndarray,
                   log_mel: np.ndarray | None = None) -> None:
        """Store one clip.

        Args:
            clip_id: a clip listed in the manifest.
            image_emb: ``[T,256,h,w]`` (cast to float16).
            audio_emb: ``[T,128]`` (cast to float32).
            log_mel: ``[T,1,96,64]``; required exactly when the cache stores log-mels.
        """
        split, row = self._where(clip_id)
        arrays = validate_arrays(self.manifest, clip_id, self.path, image_emb, audio_emb, log_mel)
        if self._done[split][row]:  # overwrite: unflag first so a crash mid-write cannot leave stale "done"
            self._storage.set_done(split, row, False)
            self._done[split][row] = False
        self._storage.write_row(split, row, arrays)
        self._storage.set_done(split, row, True)
        self._done[split][row] = True

    def verify(self) -> list[str]:
        """Read back every done clip and unflag those whose arrays no longer decode or hold NaN/inf.

        Used by ``extract-features --verify`` after a disk problem or a damaged copy: the unflagged clips are
        then re-extracted like never-done ones, and every intact clip is kept. Returns the unflagged clip ids.
        """
        bad = []
        for split, ids in self.manifest.splits.items():
            for row in np.flatnonzero(self._done[split]):
                try:
                    for name in self.manifest.arrays:
                        if not np.isfinite(self._storage.read(split, name, int(row), slice(None))).all():
                            raise ValueError(f"{name} holds NaN/inf")
                except CacheError:
                    raise
                except DAMAGED_CHUNK_ERRORS as e:  # a decode failure (or NaN) means "redo this clip"
                    log.warning("cache %s: clip %s is damaged (%s); it will be re-extracted", self.path, ids[row], e)
                    self._storage.set_done(split, int(row), False)
                    self._done[split][row] = False
                    bad.append(ids[row])
        return bad

    def close(self) -> None:
        try:
            self._storage.close()
        finally:
            self._lock.release()

    def __enter__(self) -> CacheWriter:  # noqa: PYI034 (never subclassed; typing.Self needs py3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_layout(m: CacheManifest, path: Path, frames: int, emb_shape: tuple[int, int, int],
                  store_log_mel: bool) -> None:
    if m.has_log_mel != store_log_mel:
        raise CacheError(f"cache {path} was created {'with' if m.has_log_mel else 'without'} --store-log-mel; "
                         "resume it with the same setting, or choose another --cache path")
    want = {k: v.to_dict() for k, v in array_specs(frames, emb_shape, store_log_mel).items()}
    have = {k: v.to_dict() for k, v in m.arrays.items()}
    if m.frames != frames or want != have:
        raise CacheError(f"cache {path} has another layout (frames={m.frames}, arrays={sorted(have)}, image "
                         f"{list(m.emb_shape)}) than requested (frames={frames}, arrays={sorted(want)}, image "
                         f"{list(emb_shape)}); match --store-log-mel/--encoder, or choose another --cache path")


def open_writer(p: Path, cls: type[Storage], lock: WriterLock, *, fingerprint: Mapping[str, Any],
                clips: list[tuple[str, str]], frames: int, emb_shape: tuple[int, int, int], store_log_mel: bool,
                codec: str, info: Mapping[str, Any] | None) -> CacheWriter:
    """Create the store at ``p`` or resume it (checks, then appended rows); the caller already holds ``lock``."""
    if not p.exists():
        manifest = new_manifest(cls.name, fingerprint, clips, frames, emb_shape, store_log_mel, codec, info)
        create_store(cls, p, manifest)
        return CacheWriter(p, cls(p, writable=True), manifest, lock)
    found = detect_backend(p)
    if found is not cls:
        raise CacheError(f"cache {p} is a {found.name} store; pass --backend {found.name} to resume it, or "
                         "choose another --cache path")
    storage = cls(p, writable=True)
    try:
        manifest = load_manifest(storage, cls, p)
        check_fingerprint(manifest, fingerprint, p, writing=True)
        check_layout(manifest, p, frames, emb_shape, store_log_mel)
        grown = manifest.add_clips(clips)
        for split in grown:  # arrays first, then the manifest that lists their rows
            storage.grow(manifest, split)
        if grown:
            storage.write_manifest(manifest)
            log.info("cache %s: added rows to %s", p, ", ".join(f"{s} ({n})" for s, n in grown.items()))
        return CacheWriter(p, storage, manifest, lock)
    except BaseException:
        storage.close()
        raise
