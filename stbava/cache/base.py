"""One reader/writer contract over interchangeable storage backends, chosen by name.

As in lhotse's feature storage, a backend is a small class registered under a name ("zarr", "hdf5") and
the name is recorded in the manifest. Everything that must behave the same for every backend (fingerprint
checks, shape validation, the write-arrays-then-done-flag order) lives here, once; the backends only move
arrays in and out of their store (see :class:`Storage`) and import nothing from here, so the registry can
load them by name without an import cycle. The writer lock is in :mod:`stbava.cache.lock`.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from stbava.cache.manifest import (
    AUDIO,
    IMAGE,
    LOG_MEL,
    CacheError,
    CacheManifest,
    array_specs,
)
from stbava.provenance import require_same_encoders

# What reading a damaged chunk raises: the checksum codecs (zarr CRC32C: ValueError; HDF5 Fletcher-32: OSError),
# blosc/zstd on a cut buffer (RuntimeError / ValueError), a file cut short (EOFError / OSError). Programming
# errors (TypeError, AttributeError, KeyError, ...) are not in it: they surface as themselves, not as "damaged".
DAMAGED_CHUNK_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError, OSError, EOFError)

__all__ = ["REBUILD_HINT", "CacheError", "Storage", "detect_backend", "get_backend", "register_backend"]

REBUILD_HINT = "`stbava extract-features --cache {path} ...` (or `make extract-features CACHE={path}`)"
# name -> (module, class): imported on first use (zarr and h5py are slow imports), in this order for detection
_BUILTIN = {"zarr": ("stbava.cache.zarr_backend", "ZarrStorage"),
            "hdf5": ("stbava.cache.hdf5_backend", "HDF5Storage")}
_BACKENDS: dict[str, type[Storage]] = {}


class Storage(Protocol):
    """What a backend implements. Arrays are addressed by ``(split, name)``, rows by clip.

    Instances open their store lazily and reopen after a fork (new pid), so a reader that holds one can be
    sent to DataLoader workers; no open file handle is ever pickled.
    """

    name: ClassVar[str]
    codecs: ClassVar[tuple[str, ...]]  # first = default
    suffix: ClassVar[str]  # conventional path suffix, for messages
    concurrent_writers: ClassVar[bool]  # may processes write disjoint rows of one store at the same time?

    def __init__(self, path: Path, writable: bool) -> None: ...

    @staticmethod
    def detect(path: Path) -> bool: ...

    @staticmethod
    def create(path: Path, manifest: CacheManifest) -> None:
        """Build a complete store (arrays for every split, done flags False, manifest) at a fresh ``path``."""

    def read_manifest(self) -> dict[str, Any]: ...

    def write_manifest(self, manifest: CacheManifest) -> None:
        """Replace the stored manifest atomically."""

    def grow(self, manifest: CacheManifest, split: str) -> None:
        """Create or enlarge ``split``'s arrays and done flags to ``len(manifest.splits[split])`` rows."""

    def write_row(self, split: str, row: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one clip's arrays and make them durable before returning."""

    def set_done(self, split: str, row: int, value: bool) -> None: ...

    def done(self, split: str) -> np.ndarray:
        """Bool ``[rows]`` done flags of a split."""

    def read(self, split: str, name: str, row: int, frames: slice | list[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def register_backend(cls: type[Storage]) -> type[Storage]:
    """Class decorator: make a backend available under ``cls.name``."""
    _BACKENDS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for name, (module, cls_name) in _BUILTIN.items():
        if name not in _BACKENDS:
            register_backend(getattr(importlib.import_module(module), cls_name))


def get_backend(name: str) -> type[Storage]:
    _load_builtin()
    if name not in _BACKENDS:
        raise CacheError(f"unknown cache backend {name!r}: use one of {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def detect_backend(path: Path) -> type[Storage]:
    """The backend whose store is at ``path``; CacheError when there is none."""
    _load_builtin()
    if not path.exists():
        raise CacheError(f"no feature cache at {path}; build it with {REBUILD_HINT.format(path=path)}")
    for cls in _BACKENDS.values():
        if cls.detect(path):
            return cls
    raise CacheError(f"{path} is not a stbava feature cache (no manifest found); point --cache at a cache "
                     f"built with {REBUILD_HINT.format(path=path)}, or delete it and rebuild")


def load_manifest(storage: Storage, cls: type[Storage], path: Path) -> CacheManifest:
    manifest = CacheManifest.from_dict(storage.read_manifest(), str(path))
    if manifest.backend != cls.name:
        raise CacheError(f"cache {path}: manifest says backend {manifest.backend!r} but the store is "
                         f"{cls.name!r}; the cache is damaged, rebuild it")
    return manifest


def check_fingerprint(manifest: CacheManifest, expected: Mapping[str, Any] | None, path: Path,
                      writing: bool) -> None:
    """Refuse a cache built by other encoders: its embeddings would silently mean something else."""
    fix = ("delete it or choose another --cache path, then rerun `stbava extract-features`" if writing else
           f"rebuild it (after deleting it, or into a new path) with {REBUILD_HINT.format(path=path)} using the "
           "same encoder settings, or point at the cache those settings produced")
    require_same_encoders(manifest.fingerprint, expected, subject=f"cache {path} holds", fix=fix, error=CacheError)


def validate_arrays(manifest: CacheManifest, clip_id: str, path: Path, image: np.ndarray, audio: np.ndarray,
                    log_mel: np.ndarray | None) -> dict[str, np.ndarray]:
    """Check declared vs actual shapes (as lhotse does on every write), cast to the stored dtypes."""
    given = {IMAGE: image, AUDIO: audio}
    if manifest.has_log_mel:
        if log_mel is None:
            raise CacheError(f"cache {path} stores log-mels but none were given for clip {clip_id}")
        given[LOG_MEL] = log_mel
    elif log_mel is not None:
        raise CacheError(f"cache {path} was created without log-mels; rebuild it with --store-log-mel")
    out = {}
    for name, arr in given.items():
        spec = manifest.arrays[name]
        want = (manifest.frames, *spec.frame_shape)
        arr = np.asarray(arr)
        if arr.shape != want:
            raise CacheError(f"cache {path}: {name} of clip {clip_id} has shape {arr.shape}, expected {want}")
        with np.errstate(over="ignore"):  # overflow to inf is reported below, with the clip's name
            arr = np.ascontiguousarray(arr, dtype=spec.dtype)
        if not np.isfinite(arr).all():
            raise CacheError(f"cache {path}: {name} of clip {clip_id} has NaN/inf values (after casting to "
                             f"{spec.dtype}); refusing to cache them")
        out[name] = arr
    return out


def remove_partials(path: Path) -> None:
    """Delete what a killed writer left half-done (only called while holding the lock): a store half-created
    by ``create``, and inside a zarr store the temp files of interrupted atomic writes (zarr's chunk
    ``*.partial`` files, our ``.stbava_manifest.json.*.tmp``). Readers never look at either."""
    for p in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if path.is_dir():
        for p in path.rglob("*"):
            if p.name.endswith(".partial") or (p.name.startswith(".") and p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)


def create_store(cls: type[Storage], path: Path, manifest: CacheManifest) -> None:
    """Build the store beside ``path`` and rename it into place, so a cache either exists whole or not at all."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        cls.create(tmp, manifest)
        os.rename(tmp, path)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        raise


def new_manifest(backend: str, fingerprint: Mapping[str, Any], clips: Iterable[tuple[str, str]], frames: int,
                 emb_shape: tuple[int, int, int], store_log_mel: bool, codec: str,
                 info: Mapping[str, Any] | None) -> CacheManifest:
    m = CacheManifest(backend=backend, frames=int(frames), arrays=array_specs(frames, emb_shape, store_log_mel),
                      fingerprint=dict(fingerprint), splits={}, codec=codec, info=dict(info or {}))
    m.add_clips(list(clips))
    return m
