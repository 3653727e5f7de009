"""Encoder fingerprints compared in one place: a cache, a checkpoint and a live encoder must agree.

A fingerprint (built by :func:`stbava.encoders.fingerprint.encoder_fingerprint`) is a JSON-able dict of
everything that determines the embeddings. This module only compares them, so that every layer (the cache,
checkpoints, the pipeline) uses the same rule and the same error wording.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, ASCII: equal fingerprints give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def normalise(obj: Any) -> Any:
    """JSON round trip (tuples -> lists, int keys -> str) so a fresh fingerprint compares with a stored one."""
    return json.loads(canonical_json(obj))


def fingerprint_digest(fp: Mapping[str, Any]) -> str:
    """16 hex chars of sha256 over the canonical JSON of ``fp``."""
    return hashlib.sha256(canonical_json(fp).encode()).hexdigest()[:16]


def fingerprint_differences(stored: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the fingerprint entries that differ, e.g. ``["image.weights"]`` (for error messages)."""
    a, b = normalise(dict(stored)), normalise(dict(expected))
    missing = object()
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += fingerprint_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def encoder_family(fp: Mapping[str, Any]) -> str:
    """``"SAM 2"`` for a fingerprint of a SAM 2 image encoder (its image section says ``family: sam2``), else
    ``"SAM"`` (SAM fingerprints predate the field and keep their exact contents)."""
    image = fp.get("image")
    return "SAM 2" if isinstance(image, Mapping) and image.get("family") == "sam2" else "SAM"


def require_same_encoders(recorded: Mapping[str, Any] | None, actual: Mapping[str, Any] | None, *,
                          subject: str, fix: str, error: type[Exception], other: str = "") -> None:
    """Raise ``error`` when two fingerprints differ; nothing to compare when either is unknown (None).

    Args:
        recorded: the fingerprint the subject was made with (a cache's, a checkpoint's).
        actual: the fingerprint of what it is about to be used with.
        subject: starts the message, e.g. ``"cache c.zarr holds"`` or ``"checkpoint best.pt was trained on"``.
        fix: what the user should do, appended to the message.
        error: the exception type of the calling layer (CacheError, CheckpointFormatError, ...).
        other: what ``actual`` describes, e.g. ``"these encoder settings"`` (optional).

    The message reads ``<subject> embeddings of another encoder (fingerprint differs in: image.weights) than
    <other> [digest vs digest]; <fix>``.
    """
    if recorded is None or actual is None or normalise(dict(recorded)) == normalise(dict(actual)):
        return
    keys = ", ".join(fingerprint_differences(recorded, actual)) or "(values)"
    than = f" than {other}" if other else ""
    fam_a, fam_b = encoder_family(recorded), encoder_family(actual)
    if fam_a != fam_b:  # SAM and SAM 2 features have other shapes and meanings: say so by name
        keys = (f"{keys}; {fam_a} ({recorded.get('image', {}).get('encoder')}) vs {fam_b} "
                f"({actual.get('image', {}).get('encoder')}): SAM and SAM 2 features never mix")
    raise error(f"{subject} embeddings of another encoder (fingerprint differs in: {keys}){than} "
                f"[{fingerprint_digest(recorded)} vs {fingerprint_digest(actual)}]; {fix}")
