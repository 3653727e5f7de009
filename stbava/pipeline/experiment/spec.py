"""Experiment specs (``configs/experiments/*.yaml``): a base config, variants of it, an optional numeric sweep.

A spec is a YAML mapping::

    title: "Table 6.3: ablation on the components"   # heading of results.md
    base: configs/ms3.yaml        # a config file, or a mapping of overrides (inline base)
    set: {train.epochs: 20}       # overrides applied to every variant (optional)
    full: full                    # the variant that gets the shuffled-audio control (optional)
    variants:
      - name: no_temporal         # folder name: letters, digits, _ - .
        label: "w/o Temporal Attn."   # row label (default: the name)
        set: {model.temporal: false}
        finetune: {}              # then stage three (finetune-adapters) with these overrides
    sweep:                        # one variant per value (optional)
      key: model.depth
      values: [1, 2, 3]
      set: {}                     # overrides shared by the sweep's variants (optional)
      finetune: null              # as for a variant (optional)

Override keys are dotted (``model.temporal``) or nested mappings. A relative ``base`` path is looked up next
to the spec, then in each folder above it (so ``configs/ms3.yaml`` works from ``configs/experiments/``).
``finetune`` absent or null: stage two only; a mapping (``{}`` = the stage-three recipe as it is): stage two,
then ``finetune-adapters`` from its best.pt with these overrides on top.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stbava.config import Config, ConfigError, config_from_dict, deep_update

SPEC_KEYS = {"title", "base", "set", "full", "variants", "sweep"}
VARIANT_KEYS = {"name", "label", "set", "finetune"}
SWEEP_KEYS = {"key", "values", "set", "finetune"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Variant:
    """One row of the table: config overrides on top of the base, and optionally a stage-three fine-tune."""

    name: str
    label: str
    overrides: dict[str, Any]  # nested, applied on top of the spec's base + set
    finetune: dict[str, Any] | None = None  # nested stage-three overrides; None = stage two only
    sweep_value: float | int | None = None  # the swept value, for sweep variants


@dataclass
class Spec:
    """A loaded, checked spec: where it came from, the base overrides, the expanded variants."""

    path: Path
    title: str
    base: dict[str, Any]  # nested overrides of the defaults: base file (or inline base) <- spec ``set``
    variants: list[Variant]
    full: str | None = None  # name of the variant that also gets the shuffled-audio control
    sweep_key: str | None = None  # the swept config key (results get a plot over it)


def nested(overrides: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``{"model.depth": 2, "train": {"lr": 0.1}}`` -> ``{"model": {"depth": 2}, "train": {"lr": 0.1}}``."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: overrides must be a mapping, got {overrides!r}")
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node: dict[str, Any] = {}
        leaf = node
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = nested(value, f"{where}.{key}") if isinstance(value, Mapping) else value
        deep_update(out, node)
    return out


def _check_keys(data: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(allowed))})")
    return dict(data)


def _finetune(data: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    if data.get("finetune") is None:
        return None
    return nested(data["finetune"], f"{where}.finetune")


def find_base(base: str, spec_path: Path) -> Path:
    """A relative base path: next to the spec, then in each folder above it; absolute paths as they are."""
    p = Path(base)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [d / p for d in [spec_path.parent, *spec_path.parent.parents]]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{spec_path}: base config {base!r} not found next to the spec or in a folder above it")


def _base_overrides(base: Any, spec_path: Path) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, Mapping):
        return nested(base, f"{spec_path}: base")
    if not isinstance(base, str):
        raise ConfigError(f"{spec_path}: base must be a config path or a mapping of overrides")
    loaded = yaml.safe_load(find_base(base, spec_path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{base}: top level must be a mapping")
    return loaded


def _variants(raw: Any, where: str) -> list[Variant]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: variants must be a list")
    out = []
    for i, v in enumerate(raw):
        v = _check_keys(v, VARIANT_KEYS, f"{where}: variants[{i}]")
        if "name" not in v:
            raise ConfigError(f"{where}: variants[{i}] has no name")
        name = str(v["name"])
        out.append(Variant(name, str(v.get("label", name)), nested(v.get("set"), f"{where}: {name}.set"),
                           _finetune(v, f"{where}: {name}")))
    return out


def _sweep_variants(raw: Any, where: str) -> list[Variant]:
    s = _check_keys(raw, SWEEP_KEYS, f"{where}: sweep")
    key, values = s.get("key"), s.get("values")
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{where}: sweep.key must be a dotted config key like model.depth")
    if not isinstance(values, list) or not values or \
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        raise ConfigError(f"{where}: sweep.values must be a non-empty list of numbers")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: sweep.values has repeated values")
    shared = nested(s.get("set"), f"{where}: sweep.set")
    finetune = _finetune(s, f"{where}: sweep")
    short = key.split(".")[-1]
    return [Variant(f"{short}{x}", f"{key}={x}", deep_update(nested({key: x}, where), shared), finetune, x)
            for x in values]


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec (structure, names, ``full``); configs are resolved by :func:`variant_config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment spec not found: {path}")
    data = _check_keys(yaml.safe_load(path.read_text()) or {}, SPEC_KEYS, str(path))
    base = deep_update(_base_overrides(data.get("base"), path), nested(data.get("set"), f"{path}: set"))
    variants = _variants(data.get("variants"), str(path))
    sweep_key = None
    if data.get("sweep") is not None:
        variants += _sweep_variants(data["sweep"], str(path))
        sweep_key = data["sweep"]["key"]
    if not variants:
        raise ConfigError(f"{path}: no variants and no sweep")
    names = [v.name for v in variants]
    bad = [n for n in names if not NAME_RE.match(n)]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names must be unique and use only letters, digits, _ - . ({names})")
    full = data.get("full")
    if full is not None and full not in names:
        raise ConfigError(f"{path}: full: {full!r} is not a variant (variants: {', '.join(names)})")
    return Spec(path, str(data.get("title", path.stem)), base, variants, full, sweep_key)


def variant_overrides(spec: Spec, variant: Variant, seed: int, extra: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Nested overrides of one run: base <- variant <- ``extra`` (e.g. CLI checkpoints) <- ``train.seed``."""
    data = deep_update(copy.deepcopy(spec.base), copy.deepcopy(variant.overrides))
    deep_update(data, copy.deepcopy(dict(extra or {})))
    return deep_update(data, {"train": {"seed": seed}})


def variant_config(spec: Spec, variant: Variant, seed: int, extra: Mapping[str, Any] | None = None) -> Config:
    """The resolved stage-two config of one run (unknown keys and wrong types are :class:`ConfigError`)."""
    try:
        return config_from_dict(variant_overrides(spec, variant, seed, extra))
    except ConfigError as e:
        raise ConfigError(f"{spec.path}: variant {variant.name}: {e}") from None
