"""Several ranks of one torchrun job filling one cache, each with a disjoint set of clips.

Rank 0 creates (or resumes) the store with :func:`~stbava.cache.create.create_cache`, which takes the
cache lock (:mod:`stbava.cache.lock`) with a random job token; every other rank calls :func:`join_cache`
with that token. The end state (arrays, done flags, manifest) is the one a single process would have
written, because rows are fixed by the manifest rank 0 wrote before anyone else opened the store, and each
clip is written whole by exactly one rank.

- zarr: every rank writes straight into the store. A chunk holds one frame of one clip (audio: one clip)
  and every done flag is its own one-byte chunk, so disjoint writers never touch the same file, and zarr
  replaces chunk files atomically. No rank changes array metadata or the manifest.
- HDF5 cannot take concurrent writers (file locking; a second ``r+`` open fails). Rank 0 writes the store
  itself and every other rank writes a complete little cache of its own clips beside it
  (``.<name>.rank<r>``); after all ranks are done, rank 0 copies the finished clips in with the normal
  ``write_clip`` (arrays, then done flag) and deletes each part. We prefer part files to gathering arrays
  on rank 0 over the process group: ranks never wait on each other while encoding (a gather per batch
  would lock-step them and hold vit_h's 10 MiB per clip in flight on every rank), a part is as
  crash-safe as any cache (done flags), and the merge is one sequential copy (~280 MiB/s measured on a
  busy 2-core CPU, i.e. minutes for all of AVSBench at vit_h size, next to hours of encoding). If the job
  dies, the parts stay; the next ``create_cache`` of the store (any world size, also a single process)
  merges them first, so their finished clips are not redone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stbava.cache.base import check_fingerprint, get_backend, remove_partials
from stbava.cache.lock import WriterLock
from stbava.cache.manifest import CacheError, CacheManifest
from stbava.cache.reader import open_cache
from stbava.cache.writer import CacheWriter, check_layout, open_writer

__all__ = ["join_cache", "leftover_parts", "merge_parts", "part_path"]

log = logging.getLogger(__name__)


def part_path(path: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its clips when the backend takes no concurrent writers."""
    p = Path(path)
    return p.with_name(f".{p.name}.rank{rank}")


def leftover_parts(path: str | Path) -> list[Path]:
    """Part files of the store at ``path`` (of any world size), in rank order."""
    p = Path(path)
    pattern = re.compile(rf"\.{re.escape(p.name)}\.rank(\d+)")
    found = [(int(m.group(1)), q) for q in p.parent.glob(f".{p.name}.rank*") if (m := pattern.fullmatch(q.name))]
    return [q for _, q in sorted(found)]


def merge_parts(writer: CacheWriter) -> int:
    """Copy every finished clip of the part files beside ``writer``'s store into it; delete the parts.

    Idempotent: a merge killed half way leaves the part, and copying a clip again rewrites the same data.

    Returns:
        The number of clips copied.
    """
    n = 0
    for part in leftover_parts(writer.path):
        try:
            reader = open_cache(part, expected_fingerprint=writer.fingerprint)
        except CacheError as e:
            raise CacheError(f"cannot merge {part}, a shard a torchrun extraction left beside {writer.path}: "
                             f"{e}. Delete {part} (its clips are then extracted again) and rerun") from None
        with reader:
            for split in reader.splits():
                for cid in reader.clip_ids(split):
                    mel = reader.log_mels(cid) if reader.has_log_mel else None
                    writer.write_clip(cid, reader.image_embeddings(cid), reader.audio_embeddings(cid), mel)
                    n += 1
        part.unlink()
        log.info("cache %s: merged %s", writer.path, part.name)
    return n


def join_cache(path: str | Path, backend: str, *, job: str, rank: int, manifest: Mapping[str, Any],
               fingerprint: Mapping[str, Any], clips: Iterable[tuple[str, str]], frames: int,
               emb_shape: tuple[int, int, int], store_log_mel: bool = False) -> CacheWriter:
    """A writer for rank ``rank`` (> 0) of the torchrun job whose rank 0 created the store with ``job``.

    Args:
        path: the store rank 0 created or resumed (before a barrier).
        backend: its backend name.
        job: the token rank 0 passed to ``create_cache``.
        rank: this process's global rank.
        manifest: ``writer.manifest.to_dict()`` of rank 0's writer, sent over the process group: an HDF5
            store cannot even be opened for reading while rank 0 has it open for writing.
        fingerprint, frames, emb_shape, store_log_mel: as for ``create_cache`` (checked against the store).
        clips: ``(clip_id, split)`` of the clips this rank will write (all listed in the store's manifest).

    Returns:
        A writer on the store itself (zarr) or on this rank's part file (HDF5). Closing it never releases
        the job's lock.

    Raises:
        CacheError: the lock does not name ``job``, or the store does not match.
    """
    p = Path(path)
    cls = get_backend(backend)
    clips = list(clips)
    lock = WriterLock(p, job)
    lock.join()
    m = CacheManifest.from_dict(manifest, str(p))
    if m.backend != cls.name:
        raise CacheError(f"cache {p}: rank 0 opened a {m.backend} store, rank {rank} was asked for {cls.name}; "
                         "launch every rank with the same --backend")
    check_fingerprint(m, fingerprint, p, writing=True)  # e.g. another checkpoint file on another node
    check_layout(m, p, frames, emb_shape, store_log_mel)
    missing = [cid for cid, _ in clips if m.locate(cid) is None]
    if missing:
        raise CacheError(f"cache {p}: rank {rank} was given clips the manifest does not list "
                         f"({', '.join(missing[:3])}); rank 0 must create the store with every clip before the "
                         "other ranks join")
    if cls.concurrent_writers:
        return CacheWriter(p, cls(p, writable=True), m, lock)
    part = part_path(p, rank)
    remove_partials(part)
    return open_writer(part, cls, lock, fingerprint=fingerprint, clips=clips, frames=frames, emb_shape=emb_shape,
                       store_log_mel=store_log_mel, codec=cls.codecs[0], info={"part_of": p.name, "rank": rank})
