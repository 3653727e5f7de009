"""Stage-one feature cache: frozen-encoder embeddings per clip in one zarr or HDF5 store per subset.

``open_cache(path)`` gives a :class:`CacheReader`; ``create_cache(...)`` a :class:`CacheWriter` (new or
resumed) holding the cache's writer lock (:mod:`stbava.cache.lock`); under torchrun the job's other ranks
``join_cache`` (:mod:`stbava.cache.shards`). Backends are registered by name in :mod:`stbava.cache.base`;
the manifest format is in :mod:`stbava.cache.manifest`.
This package imports nothing from data/encoders: fingerprints arrive as dicts.
"""

from stbava.cache.base import get_backend, register_backend
from stbava.cache.create import create_cache
from stbava.cache.manifest import SCHEMA_VERSION, CacheError, CacheManifest
from stbava.cache.reader import CacheReader, open_cache
from stbava.cache.shards import join_cache, merge_parts
from stbava.cache.writer import CacheWriter

__all__ = ["BACKENDS", "SCHEMA_VERSION", "CacheError", "CacheManifest", "CacheReader", "CacheWriter",
           "create_cache", "get_backend", "join_cache", "merge_parts", "open_cache", "register_backend"]

BACKENDS = ("zarr", "hdf5")
