"""Content digests: weight files are identified by what they hold (sha256), never by their path.

One helper for the whole package (fingerprints, checkpoint provenance, reports). Moving or renaming a file
keeps every recorded digest valid; editing it does not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (``hashlib.file_digest``).

    Cached per (resolved path, size, mtime) within the process: a 2.5 GB SAM checkpoint is hashed once per
    run, however many stages ask, and a rewritten file is hashed again.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        with open(p, "rb") as f:
            _cache[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _cache[key]
