"""zarr v3 directory store: one array per (split, modality), one chunk per frame, no shards.

Layout of ``x.zarr/``: ``stbava_manifest.json`` (atomic JSON), and per split ``<split>/image``
``[rows,T,256,h,w]`` float16, ``<split>/audio`` ``[rows,T,128]`` float32, optionally ``<split>/log_mel``
``[rows,T,1,96,64]``, and ``<split>/done`` bool ``[rows]`` with one uncompressed 1-byte chunk per clip.
No sharding: shard writes are read-modify-write and lose frames under concurrent writers (ENV-NOTES §4).
zarr's local store replaces every chunk file atomically, so a chunk is either old or new, never torn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from stbava.cache.manifest import CacheError, CacheManifest, write_json_atomic

MANIFEST = "stbava_manifest.json"
DONE = "done"


def _compressors(codec: str) -> list[Any]:
    """Codec name -> zarr compressors, always ending in a CRC32C checksum of the stored chunk.

    The checksum is what makes damage detectable: a truncated blosc chunk can decode without error into
    plausible-looking numbers (blosc may read past the short buffer), so ``--verify`` and every read rely on
    the CRC instead of on the decoder failing. It costs ~1 ms per 128 KiB frame chunk.

    Default ``blosc-lz4`` (byte shuffle + lz4), chosen with benchmarks/bench_cache.py (2 CPUs, warm cache):
    on incompressible N(0,1) float16 frames it stores them raw and reads as fast as no codec (~1.9-2.4 GB/s);
    on smooth feature maps it saves 24 % (1.32x) and still reads ~1.8 GB/s (about 900 frames/s per process).
    ``blosc-zstd`` compresses more (1.49x) but reads at ~0.8-0.9 GB/s.
    """
    if codec == "blosc-lz4":
        comp: list[Any] = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    elif codec == "blosc-zstd":
        comp = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
    elif codec == "zstd":
        comp = [ZstdCodec(level=3)]
    elif codec == "none":
        comp = []
    else:
        raise CacheError(f"unknown zarr codec {codec!r}")
    return [*comp, Crc32cCodec()]


class ZarrStorage:
    """zarr v3 backend. Arrays are opened lazily per process; a zarr Array itself pickles safely anyway."""

    name: ClassVar[str] = "zarr"
    codecs: ClassVar[tuple[str, ...]] = ("blosc-lz4", "none", "blosc-zstd", "zstd")
    suffix: ClassVar[str] = ".zarr"
    # one chunk file per (clip, frame) and per done flag, no shards: disjoint clips never share a file
    concurrent_writers: ClassVar[bool] = True

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = Path(path)
        self.mode = "r+" if writable else "r"
        self._arrays: dict[str, zarr.Array] = {}
        self._pid = os.getpid()

    @staticmethod
    def detect(path: Path) -> bool:
        return path.is_dir() and (path / MANIFEST).is_file()

    @staticmethod
    def _make_split(root: zarr.Group, manifest: CacheManifest, split: str) -> None:
        rows = len(manifest.splits[split])
        comp = _compressors(manifest.codec)
        for name, spec in manifest.arrays.items():
            root.create_array(f"{split}/{name}", shape=spec.shape(rows, manifest.frames),
                              chunks=spec.chunks(manifest.frames), dtype=spec.dtype, fill_value=0,
                              compressors=comp)
        # one 1-byte chunk per clip: a done flag is a single atomic file write, never shared between clips
        root.create_array(f"{split}/{DONE}", shape=(rows,), chunks=(1,), dtype="bool", fill_value=False,
                          compressors=None)

    @staticmethod
    def create(path: Path, manifest: CacheManifest) -> None:
        root = zarr.open_group(store=str(path), mode="w-", zarr_format=3)
        root.attrs["stbava_manifest"] = MANIFEST
        for split in manifest.splits:
            ZarrStorage._make_split(root, manifest, split)
        write_json_atomic(path / MANIFEST, manifest.to_json())

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"cache {self.path}: cannot read {MANIFEST} ({e}); rebuild the cache") from None

    def write_manifest(self, manifest: CacheManifest) -> None:
        write_json_atomic(self.path / MANIFEST, manifest.to_json())

    def _array(self, split: str, name: str) -> zarr.Array:
        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        key = f"{split}/{name}"
        arr = self._arrays.get(key)
        if arr is None:
            try:
                arr = zarr.open_array(store=str(self.path / split / name), mode=self.mode, zarr_format=3)
            except (FileNotFoundError, zarr.errors.NodeNotFoundError) as e:
                raise CacheError(f"cache {self.path}: array {key} is missing ({e}); the cache is damaged, "
                                 "rebuild it") from None
            self._arrays[key] = arr
        return arr

    def grow(self, manifest: CacheManifest, split: str) -> None:
        rows = len(manifest.splits[split])
        if not (self.path / split / DONE).exists():
            self._make_split(zarr.open_group(store=str(self.path), mode="r+"), manifest, split)
            return
        for name, spec in manifest.arrays.items():
            self._array(split, name).resize(spec.shape(rows, manifest.frames))
        self._array(split, DONE).resize((rows,))

    def write_row(self, split: str, row: int, arrays: Mapping[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            self._array(split, name)[row] = arr  # every chunk file is written (atomically) before this returns

    def set_done(self, split: str, row: int, value: bool) -> None:
        self._array(split, DONE)[row] = value

    def done(self, split: str) -> np.ndarray:
        return np.asarray(self._array(split, DONE)[:], dtype=bool)

    def read(self, split: str, name: str, row: int, frames: slice | list[int]) -> np.ndarray:
        arr = self._array(split, name)
        if isinstance(frames, slice):
            return np.asarray(arr[row, frames])
        return np.asarray(arr.get_orthogonal_selection((row, frames)))

    def close(self) -> None:
        self._arrays = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}
