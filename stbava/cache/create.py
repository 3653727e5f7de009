"""The one way to start writing a cache: take its writer lock, create or resume the store, merge leftover shards.

Kept apart from :mod:`stbava.cache.writer` (the open writer) and :mod:`stbava.cache.shards` (part files of a
torchrun job) because it uses both, so imports run one way: writer <- shards <- create.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stbava.cache.base import get_backend, remove_partials
from stbava.cache.lock import WriterLock
from stbava.cache.manifest import CacheError
from stbava.cache.shards import merge_parts
from stbava.cache.writer import CacheWriter, open_writer

__all__ = ["create_cache"]


def create_cache(path: str | Path, backend: str = "zarr", *, fingerprint: Mapping[str, Any],
                 clips: Iterable[tuple[str, str]], frames: int, emb_shape: tuple[int, int, int],
                 store_log_mel: bool = False, codec: str | None = None,
                 info: Mapping[str, Any] | None = None, job: str | None = None) -> CacheWriter:
    """Create a cache, or open an existing one to resume (clips it does not list yet are appended).

    Shards that a killed torchrun extraction left beside the store (HDF5, see :mod:`stbava.cache.shards`)
    are merged into it first, so their finished clips count as done.

    Args:
        path: the store to create (``x.zarr`` directory / ``x.h5`` file); its parent is created.
        backend: a registered backend name (``zarr`` or ``hdf5``).
        fingerprint: the encoder fingerprint; an existing cache must hold exactly this one.
        clips: ``(clip_id, split)`` pairs in the order rows are assigned.
        frames: T, frames per clip.
        emb_shape: ``(256, h, w)`` of one frame's image embedding.
        store_log_mel: also keep the ``[T,1,96,64]`` VGGish inputs.
        codec: backend codec name (the backend's default when None); ignored when resuming.
        info: informational extras recorded in a new manifest (amp, device, ...).
        job: torchrun job token written into the lock, so the job's other ranks can ``join_cache``.

    Returns:
        A writer that holds the lock until it is closed.

    Raises:
        CacheError: another writer holds the lock, or the existing store has another backend, encoder
            fingerprint or layout.
    """
    p = Path(path)
    cls = get_backend(backend)
    codec = codec or cls.codecs[0]
    if codec not in cls.codecs:
        raise CacheError(f"codec {codec!r} is not available for {cls.name}: use one of {', '.join(cls.codecs)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(p, job)
    lock.acquire()
    try:
        remove_partials(p)
        writer = open_writer(p, cls, lock, fingerprint=fingerprint, clips=list(clips), frames=frames,
                             emb_shape=emb_shape, store_log_mel=store_log_mel, codec=codec, info=info)
    except BaseException:
        lock.release()
        raise
    try:
        merge_parts(writer)
    except BaseException:
        writer.close()
        raise
    return writer
