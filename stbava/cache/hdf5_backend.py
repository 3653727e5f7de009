"""HDF5 single-file store with the same contract as the zarr one.

Layout of ``x.h5``: root attribute ``stbava_manifest`` (JSON text) and per split the datasets ``image``,
``audio``, optional ``log_mel`` (resizable along rows, one chunk per frame) and a ``done`` bool dataset.
HDF5 is not crash-safe inside a write, so every row is flushed before its done flag is set and flushed.
h5py handles cannot be pickled or shared across a fork: the file is opened lazily in each process and
the handle is dropped when pickled. HDF5 file locking allows one writer per file (ENV-NOTES §4).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from stbava.cache.manifest import CacheError, CacheManifest

ATTR = "stbava_manifest"
DONE = "done"
_DONE_CHUNK = 256


def _filters(codec: str) -> dict[str, Any]:
    """Codec name -> h5py dataset filter kwargs, always with a Fletcher-32 checksum per chunk.

    ``none`` is by far the fastest HDF5 option (ENV-NOTES §4). The checksum makes a damaged chunk a read error
    instead of silently wrong numbers, which ``--verify`` relies on.
    """
    if codec == "none":
        return {"fletcher32": True}
    if codec == "lzf":
        return {"compression": "lzf", "shuffle": True, "fletcher32": True}
    if codec == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True, "fletcher32": True}
    raise CacheError(f"unknown hdf5 codec {codec!r}")


class HDF5Storage:
    """h5py backend; ``writable`` opens ``r+`` (exclusive under HDF5 file locking), else ``r``."""

    name: ClassVar[str] = "hdf5"
    codecs: ClassVar[tuple[str, ...]] = ("none", "lzf", "gzip")
    suffix: ClassVar[str] = ".h5"
    concurrent_writers: ClassVar[bool] = False  # HDF5 file locking: one writer per file (see stbava.cache.shards)

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = Path(path)
        self.mode = "r+" if writable else "r"
        self._file: h5py.File | None = None
        self._pid = os.getpid()

    @staticmethod
    def detect(path: Path) -> bool:
        return path.is_file() and h5py.is_hdf5(str(path))

    @staticmethod
    def _make_split(f: h5py.File, manifest: CacheManifest, split: str) -> None:
        rows = len(manifest.splits[split])
        g = f.require_group(split)
        for name, spec in manifest.arrays.items():
            shape = spec.shape(rows, manifest.frames)
            g.create_dataset(name, shape=shape, maxshape=(None, *shape[1:]), chunks=spec.chunks(manifest.frames),
                             dtype=spec.dtype, fillvalue=0, **_filters(manifest.codec))
        g.create_dataset(DONE, shape=(rows,), maxshape=(None,), chunks=(_DONE_CHUNK,), dtype=bool,
                         fillvalue=False)

    @staticmethod
    def create(path: Path, manifest: CacheManifest) -> None:
        with h5py.File(path, "w-") as f:
            for split in manifest.splits:
                HDF5Storage._make_split(f, manifest, split)
            f.attrs[ATTR] = manifest.to_json()

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = None  # never touch a handle inherited through fork
            try:
                self._file = h5py.File(self.path, self.mode)
            except OSError as e:
                hint = ("another process has it open for writing (is an extraction running?); wait for it"
                        if "lock" in str(e).lower() else "the file is damaged or not HDF5; rebuild the cache")
                raise CacheError(f"cannot open cache {self.path} ({e}): {hint}") from None
            self._pid = os.getpid()
        return self._file

    def read_manifest(self) -> dict[str, Any]:
        text = self._h5().attrs.get(ATTR)
        if text is None:
            raise CacheError(f"cache {self.path}: no '{ATTR}' attribute; not a stbava cache, rebuild it")
        return json.loads(text.decode() if isinstance(text, bytes) else text)

    def write_manifest(self, manifest: CacheManifest) -> None:
        f = self._h5()
        f.attrs[ATTR] = manifest.to_json()
        f.flush()

    def _ds(self, split: str, name: str) -> h5py.Dataset:
        try:
            return self._h5()[f"{split}/{name}"]
        except KeyError:
            raise CacheError(f"cache {self.path}: dataset {split}/{name} is missing; the cache is damaged, "
                             "rebuild it") from None

    def grow(self, manifest: CacheManifest, split: str) -> None:
        f = self._h5()
        rows = len(manifest.splits[split])
        if split not in f:
            self._make_split(f, manifest, split)
        else:
            for name in (*manifest.arrays, DONE):
                self._ds(split, name).resize(rows, axis=0)
        f.flush()

    def write_row(self, split: str, row: int, arrays: Mapping[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            self._ds(split, name)[row] = arr
        self._h5().flush()  # data reaches the file before the done flag is set

    def set_done(self, split: str, row: int, value: bool) -> None:
        self._ds(split, DONE)[row] = value
        self._h5().flush()

    def done(self, split: str) -> np.ndarray:
        return np.asarray(self._ds(split, DONE)[()], dtype=bool)

    def read(self, split: str, name: str, row: int, frames: slice | list[int]) -> np.ndarray:
        ds = self._ds(split, name)
        if isinstance(frames, slice):
            return ds[row, frames]
        order = np.asarray(frames)
        uniq, inverse = np.unique(order, return_inverse=True)  # h5py wants increasing, unique indices
        return ds[row, uniq.tolist()][inverse]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}
