"""Strict state-dict loading with readable errors: the one loader every stage uses.

Why a module of its own: the reference code loads weights with ``strict=False`` and silently skips what does
not fit (REFERENCE §10.4), so a typo quietly evaluates a random model. Here every load names the file, lists
missing / unexpected / mis-shaped keys, and raises :class:`CheckpointError`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A weight file that is missing, unreadable or does not fit the model it is loaded into."""


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix``, with the prefix removed (others dropped)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _shape(v: Any) -> tuple[int, ...] | None:
    return tuple(v.shape) if hasattr(v, "shape") else None


def _natural(key: str) -> list[Any]:
    """Sort key that puts blocks.2 before blocks.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def examples(keys: list[str], n: int = 5) -> str:
    """``a, b, c, ... (+7 more)``: the first ``n`` keys for an error message."""
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def state_mismatch(module: nn.Module, sd: Mapping[str, Any],
                   required: Collection[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``key: file [..] vs model [..]`` shape mismatches, each sorted.

    Args:
        module: the target.
        sd: the state dict to load.
        required: the module keys ``sd`` must hold (default: all of them). A partial load (trained weights
            only; the frozen encoders come from their own files) passes the trained names.
    """
    own = module.state_dict()
    need = own.keys() if required is None else required
    missing = sorted((k for k in need if k not in sd), key=_natural)
    unexpected = sorted((k for k in sd if k not in own), key=_natural)
    shapes = [
        f"{k}: file {list(_shape(sd[k]) or [])} vs model {list(own[k].shape)}"
        for k in sorted(own, key=lambda k: (k.count("."), _natural(k)))  # top-level (pos_embed) first
        if k in sd and _shape(sd[k]) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def check_state(module: nn.Module, sd: Mapping[str, Any], source: str, *, hint: str = "",
                required: Collection[str] | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``sd`` fits ``module`` (see :func:`state_mismatch`).

    Args:
        source: what the state dict is, e.g. ``"image_encoder.* of SAM checkpoint x.pth"``.
        hint: appended to the error (e.g. which ``--encoder`` the file fits).
    """
    missing, unexpected, shapes = state_mismatch(module, sd, required)
    parts = [f"{len(keys)} {what} ({examples(keys, 3 if what == 'shape mismatches' else 5)})"
             for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches", shapes)) if keys]
    if parts:
        msg = f"{source} does not fit {type(module).__name__}: " + "; ".join(parts) + "."
        raise CheckpointError(msg + (f" {hint}" if hint else ""))
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{source}: entries are not tensors ({examples(sorted(bad))})")


def load_strict(module: nn.Module, sd: Mapping[str, Any], source: str, *, hint: str = "",
                required: Collection[str] | None = None, assign: bool = False) -> None:
    """``module.load_state_dict`` after :func:`check_state`, so nothing is ever silently skipped.

    Args:
        module: target module.
        sd: state dict; its keys must exist in ``module`` with the same shapes, and it must hold every key
            of ``required`` (default: every key of the module).
        source: named in errors.
        hint: appended to errors.
        required: for a partial load, the module keys that must be present (others keep their values).
        assign: take the tensors as the parameters (for modules built on the meta device).
    """
    check_state(module, sd, source, hint=hint, required=required)
    module.load_state_dict(dict(sd), strict=required is None, assign=assign)
