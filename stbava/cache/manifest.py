"""The cache manifest: everything needed to read a store, and to know whether it may be reused.

It records the schema version, the backend, per-array dtype / per-frame shape / codec, the encoder
fingerprint, and clip id -> (split, row). Per-clip done flags are *not* in the JSON: they live in a bool
array inside the store, written once per clip after that clip's arrays, so the manifest itself only
changes when the clip set grows (rare, under the writer lock) and is always replaced atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.provenance import normalise

SCHEMA_VERSION = 1

# Array name -> (dtype, per-frame shape given the image embedding shape, frames per chunk along T).
# Image and log-mel chunks hold one frame (2 MiB / 24 KiB); audio rows are T x 128 float32 (2.5 KiB)
# and are stored one clip per chunk rather than as hundreds of 512-byte files.
IMAGE, AUDIO, LOG_MEL = "image", "audio", "log_mel"
LOG_MEL_SHAPE = (1, 96, 64)
AUDIO_DIM = 128


class CacheError(RuntimeError):
    """A feature cache that is missing, foreign, stale or damaged; the message names the cache and the fix."""


@dataclass(frozen=True)
class ArraySpec:
    """One modality: ``[rows, T, *frame_shape]`` of ``dtype``, chunked as ``[1, chunk_frames, *frame_shape]``."""

    dtype: str
    frame_shape: tuple[int, ...]
    chunk_frames: int  # 1 = one chunk per frame; T = one chunk per clip

    def shape(self, rows: int, frames: int) -> tuple[int, ...]:
        return (rows, frames, *self.frame_shape)

    def chunks(self, frames: int) -> tuple[int, ...]:
        return (1, min(self.chunk_frames, frames), *self.frame_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "frame_shape": list(self.frame_shape), "chunk_frames": self.chunk_frames}


def array_specs(frames: int, emb_shape: tuple[int, int, int], store_log_mel: bool) -> dict[str, ArraySpec]:
    """The arrays a cache holds: image embeddings float16, VGGish float32, optionally log-mels float32."""
    specs = {
        IMAGE: ArraySpec("float16", tuple(int(s) for s in emb_shape), 1),
        AUDIO: ArraySpec("float32", (AUDIO_DIM,), frames),
    }
    if store_log_mel:
        specs[LOG_MEL] = ArraySpec("float32", LOG_MEL_SHAPE, 1)
    return specs


@dataclass
class CacheManifest:
    """The JSON truth of a store. ``splits`` maps split -> clip ids in row order."""

    backend: str
    frames: int
    arrays: dict[str, ArraySpec]
    fingerprint: dict[str, Any]
    splits: dict[str, list[str]]
    codec: str
    info: dict[str, Any] = field(default_factory=dict)  # informational only (amp, device, stbava version)
    schema_version: int = SCHEMA_VERSION
    _index: dict[str, tuple[str, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fingerprint = normalise(self.fingerprint)
        self.reindex()

    def reindex(self) -> None:
        index: dict[str, tuple[str, int]] = {}
        for split, ids in self.splits.items():
            for row, cid in enumerate(ids):
                if cid in index:
                    raise CacheError(f"clip id {cid!r} appears twice in the cache ({index[cid][0]} and {split})")
                index[cid] = (split, row)
        self._index = index

    @property
    def has_log_mel(self) -> bool:
        return LOG_MEL in self.arrays

    @property
    def emb_shape(self) -> tuple[int, ...]:
        return self.arrays[IMAGE].frame_shape

    def locate(self, clip_id: str) -> tuple[str, int] | None:
        """``(split, row)`` of a clip, or None when the cache does not list it."""
        return self._index.get(clip_id)

    def add_clips(self, clips: list[tuple[str, str]]) -> dict[str, int]:
        """Append clips not listed yet (in the given order); returns split -> new row count for grown splits.

        Raises CacheError when a listed clip is requested under another split (the CSV changed).
        """
        grown: dict[str, int] = {}
        for cid, split in clips:
            where = self._index.get(cid)
            if where is not None:
                if where[0] != split:
                    raise CacheError(f"clip {cid!r} is cached under split {where[0]!r} but requested as {split!r}; "
                                     "the metadata CSV changed: rebuild the cache into a new path")
                continue
            ids = self.splits.setdefault(split, [])
            self._index[cid] = (split, len(ids))
            ids.append(cid)
            grown[split] = len(ids)
        return grown

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "backend": self.backend,
            "frames": self.frames,
            "codec": self.codec,
            "arrays": {k: v.to_dict() for k, v in self.arrays.items()},
            "fingerprint": self.fingerprint,
            "splits": self.splits,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> CacheManifest:
        """Parse and check a stored manifest; ``where`` (the cache path) goes into every error."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CacheError(f"cache {where}: schema version {version!r}, this stbava reads {SCHEMA_VERSION}; "
                             "rebuild it with `stbava extract-features` into a new --cache path")
        try:
            arrays = {k: ArraySpec(v["dtype"], tuple(v["frame_shape"]), int(v["chunk_frames"]))
                      for k, v in data["arrays"].items()}
            m = cls(backend=data["backend"], frames=int(data["frames"]), arrays=arrays,
                    fingerprint=data["fingerprint"], splits={k: list(v) for k, v in data["splits"].items()},
                    codec=data["codec"], info=dict(data.get("info", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"cache {where}: damaged manifest ({type(e).__name__}: {e}); rebuild it with "
                             "`stbava extract-features` into a new --cache path") from None
        if IMAGE not in m.arrays or AUDIO not in m.arrays:
            raise CacheError(f"cache {where}: manifest lacks the image/audio arrays; rebuild it")
        return m

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)  # insertion order: splits stay in manifest order


def write_json_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` atomically: readers never see half a manifest (see :mod:`stbava.atomic`)."""
    atomic_write_text(path, text)
