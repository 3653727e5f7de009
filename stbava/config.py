"""Plain-dataclass configuration, loaded from YAML overrides in ``configs/``.

Defaults run as they are (the tiny synthetic setting); a YAML file only overrides. Unknown keys and
type changes are errors, so a typo in a config never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class EncoderConfig:
    """Frozen stage-one encoders."""

    name: str = "tiny"  # image encoder: SAM vit_h | vit_l | vit_b | tiny, or SAM 2 (SAM2_ENCODERS)
    sam_checkpoint: str | None = None  # full SAM state dict (keys image_encoder.*, mask_decoder.*, ...)
    vggish_checkpoint: str | None = None  # torchvggish VGG state dict (vggish-10086976.pth)
    vggish_pca: str | None = None  # optional PCA params file; PCA is off unless given
    seed: int = 0  # seed of the random init used when no checkpoint is given
    sdpa: bool = True  # fused SDPA attention in the image encoder (values equal SAM's to float rounding)
    amp: str = "off"  # image encoder autocast at extraction: off (float32) | bf16 (CUDA; CPU where native, stbava.bf16)
    high_res_features: bool = True  # SAM 2 only: also cache (and decode with) its two high-resolution levels


SAM_ENCODERS = ("vit_h", "vit_l", "vit_b", "tiny")
# SAM 2 image encoders (Hiera, stbava.encoders.hiera): the package's 2.1 and 2.0 configs, and sam2_mini (a small
# Hiera built from sam2.1_hiera_t's config for tests and the demo).
SAM2_ENCODERS = ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
                 "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l", "sam2_mini")


# Registered fusion modules (stbava.model.fusion; a test keeps the two lists equal). The config is a leaf and
# cannot import the model; names are checked here so a typo fails at load time, not at build time.
FUSIONS = ("stbava", "tpavi", "han", "cmran", "jca", "none")
# ST-BAVA's own switches and their defaults: the published modules have no such settings.
STBAVA_SWITCHES = {"spatial_mode": "reference", "temporal": True, "bidirectional": True}
# The sizing options of ModelConfig that each fusion module takes, with the value that None stands for (the
# module's own, published structure). An option a module does not take is refused when set (config.validate),
# so a run is never labelled with a setting that did not shape its model. Meaning per module (docs/fusion.md):
# depth = stacked ST-BAVA blocks | HAN layers | CMRAN temporal-relation encoder layers per modality | JCA
# recursions of its joint cross-attention; num_heads, mlp_dim (FFN width), attn_dropout as named.
FUSION_OPTIONS: dict[str, dict[str, Any]] = {
    "stbava": {"depth": 5, "num_heads": 8, "mlp_dim": 256, "attn_dropout": 0.1, "center_audio": True},
    "han": {"depth": 1, "num_heads": 1, "mlp_dim": 512, "attn_dropout": 0.1},
    "cmran": {"depth": 2, "num_heads": 4, "mlp_dim": 2048, "attn_dropout": 0.1},
    "jca": {"depth": 1},
    "tpavi": {},
    "none": {"center_audio": True},
}
SIZING_OPTIONS = ("depth", "num_heads", "mlp_dim", "attn_dropout", "center_audio")


@dataclass
class ModelConfig:
    """Fusion module + SAM mask decoder (REFERENCE §4-§5).

    The sizing options are None by default: None means the chosen module's own value (``FUSION_OPTIONS``);
    :func:`model_option` gives the value a model is built with.
    """

    fusion: str = "stbava"  # stbava | tpavi | han | cmran | jca | none (none = decoder-only "SAM baseline")
    depth: int | None = None  # stacked layers (ST-BAVA blocks: 5 for S4, 7 for MS3); None = the module's own
    embed_dim: int = 256  # SAM prompt / embedding width
    num_heads: int | None = None  # attention heads (stbava 8, han 1, cmran 4); None = the module's own
    mlp_dim: int | None = None  # hidden width of the MLP / FFN (stbava 256, han 512, cmran 2048)
    attn_dropout: float | None = None  # dropout on attention weights (0.1 as published for all three)
    spatial_mode: str = "reference"  # reference (published code, §4.3) | paper (§4.5)
    temporal: bool = True  # ablation: False drops the temporal attention steps
    bidirectional: bool = True  # ablation: False keeps only the audio-to-visual direction
    center_audio: bool | None = None  # stage-two init of stbava/none's normalised audio projection (on)
    adapter_hidden: int = 512  # adapter hidden width (published: 512)
    adapter_zero_init: bool = True  # zero output layer: step 0 reproduces the stage-two model exactly


def model_option(m: ModelConfig, name: str) -> Any:
    """The value of sizing option ``name`` the ``m.fusion`` module is built with (None: it has no such option).

    Example: ``model_option(ModelConfig(fusion="han"), "depth") == 1``; with ``depth: 3`` it is 3.
    """
    value = getattr(m, name)
    return FUSION_OPTIONS[m.fusion].get(name) if value is None else value


@dataclass
class TrainConfig:
    """One loop for stage two (cached embeddings) and stage three (live encoder with adapters)."""

    epochs: int = 10
    batch_size: int = 4  # clips per step
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant (published) | cosine (to 0 over the run, after the warm-up)
    warmup_steps: int = 0  # linear lr warm-up over the first N optimiser steps
    seed: int = 123
    num_workers: int = 0
    val_every: int = 1  # epochs between validations
    train_fusion: bool = True  # stage three: keep ST-BAVA trainable (published code freezes it)
    grad_checkpointing: bool = True  # stage three: checkpoint encoder blocks
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 (CPU: where native) | off
    gpu_resident: bool = False  # stage two: load the whole cache onto the GPU once
    max_steps: int = 0  # 0 = no limit; otherwise stop after this many optimiser steps
    save_every_steps: int = 0  # 0 = save last.pt at epoch ends only; N = also every N steps (mid-epoch resume)
    logger: str = "jsonl"  # jsonl | tensorboard: metrics.jsonl is always written; tensorboard adds RUN_DIR/tensorboard


@dataclass
class Config:
    """Everything a run needs; written resolved into every run dir and checkpoint."""

    subset: str = "ms3"  # s4 | ms3 | avss
    frames: int = 5  # T, frames (and 0.96 s audio examples) per clip (avss: 10, shorter clips are padded)
    num_classes: int = 71  # avss only: classes incl. background (label2idx.json's count; synthetic set: 7)
    avss_labels: str = "v1s,v1m,v2"  # avss only: the label sets (parts) trained and evaluated on
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


_YAML11_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _check_value(cls: type, name: str, value: Any, where: str) -> Any:
    tp = _resolved_type(cls, name)
    allowed: tuple[Any, ...] = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where}: {name} may not be null")
    for a in allowed:
        if a is type(None):
            continue
        if a is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if a is float and isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string: `lr: 1e-3`, `--set train.lr=1e-3`
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a is bool and isinstance(value, bool):
            return value
        if a is str and isinstance(value, str):
            return value
        if a is str and isinstance(value, bool) and bool not in allowed:
            return "on" if value else "off"  # YAML 1.1 reads off/no (on/yes) as booleans: `amp: off`
    raise ConfigError(f"{where}: {name} must be {tp}, got {value!r}")


def _merge(obj: Any, data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    updates: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: '{key}' must be a mapping")
            updates[key] = _merge(current, value, f"{where}.{key}")
        else:
            updates[key] = _check_value(type(obj), key, value, where)
    return dataclasses.replace(obj, **updates)


def upgrade_legacy(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Map settings of earlier versions to today's: the one place where old configs and checkpoints change.

    ``model.fusion`` was a boolean (true = ST-BAVA, false = the decoder-only baseline); it is now the name
    of the fusion module, so ``true`` -> ``stbava`` and ``false`` -> ``none``.
    """
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("fusion"), bool):
        return {**data, "model": {**model, "fusion": "stbava" if model["fusion"] else "none"}}
    return data


# Fields of older versions that no longer exist, dropped when an old checkpoint's or run's config is read:
# model.mask_size (only 224 ever worked) and model.adapters (a stage-three checkpoint says so by its kind).
REMOVED_FIELDS = {"model": ("mask_size", "adapters")}


def _drop_removed(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for section, keys in REMOVED_FIELDS.items():
        if isinstance(out.get(section), Mapping):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def config_from_dict(data: Mapping[str, Any], base: Config | None = None, *, saved: bool = False) -> Config:
    """Apply a nested mapping of overrides to ``base`` (defaults when None).

    ``saved``: the mapping was written by an earlier stbava (a checkpoint's config); fields since removed
    are dropped instead of refused. A user's YAML file is never ``saved``: a removed field there is an error.
    Legacy values are upgraded either way (:func:`upgrade_legacy`).
    """
    cfg = _merge(base or Config(), upgrade_legacy(_drop_removed(data) if saved else data), "config")
    validate(cfg)
    return cfg


def parse_override(text: str) -> dict[str, Any]:
    """``model.depth=7`` -> ``{"model": {"depth": 7}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def deep_update(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(a.get(k), dict):
            deep_update(a[k], v)
        else:
            a[k] = v
    return a


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides (a nested mapping, e.g. from CLI flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded
    if overrides:
        data = deep_update(data, overrides)
    return config_from_dict(data)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.subset not in ("s4", "ms3", "avss"):
        raise ConfigError(f"subset must be s4, ms3 or avss, got {cfg.subset!r}")
    if cfg.subset == "avss":
        _validate_avss(cfg)
    validate_encoder(cfg.encoder)
    if cfg.model.spatial_mode not in ("reference", "paper"):
        raise ConfigError(f"model.spatial_mode must be reference|paper, got {cfg.model.spatial_mode!r}")
    _validate_fusion(cfg.model)
    if cfg.frames < 1:
        raise ConfigError(f"frames must be >= 1, got {cfg.frames}")
    if cfg.encoder.amp not in ("off", "bf16"):
        raise ConfigError(f"encoder.amp must be off|bf16, got {cfg.encoder.amp!r}")
    if cfg.train.logger not in ("jsonl", "tensorboard"):
        raise ConfigError(f"train.logger must be jsonl|tensorboard, got {cfg.train.logger!r}")
    if cfg.train.amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"train.amp must be auto|bf16|off, got {cfg.train.amp!r}")
    if cfg.train.lr_schedule not in ("constant", "cosine") or cfg.train.warmup_steps < 0:
        raise ConfigError(f"train.lr_schedule must be constant|cosine (got {cfg.train.lr_schedule!r}) and "
                          f"train.warmup_steps >= 0 (got {cfg.train.warmup_steps})")


def validate_encoder(enc: EncoderConfig) -> None:
    """A known encoder name, and SAM 2's high-res switch only with a SAM 2 encoder."""
    if enc.name not in SAM_ENCODERS + SAM2_ENCODERS:
        raise ConfigError(f"encoder.name must be one of {'|'.join(SAM_ENCODERS + SAM2_ENCODERS)}, got {enc.name!r}")
    if not enc.high_res_features and enc.name not in SAM2_ENCODERS:
        raise ConfigError(f"encoder.high_res_features=false (--high-res-features off) is a SAM 2 setting; SAM's "
                          f"{enc.name} has no high-resolution levels: drop it or choose a SAM 2 encoder")


def _validate_avss(cfg: Config) -> None:
    """AVSS clips are padded to 10 frames (published MASK_NUM); its labels are class maps, not binary masks."""
    if cfg.frames != 10:
        raise ConfigError(f"subset avss pads every clip to 10 frames: set frames: 10 (got {cfg.frames}); "
                          "configs/avss.yaml has it")
    if not 2 <= cfg.num_classes <= 71:
        raise ConfigError(f"num_classes must be in 2..71 (background + classes), got {cfg.num_classes}")
    parts = [p.strip() for p in cfg.avss_labels.split(",") if p.strip()]
    if not parts or any(p not in ("v1s", "v1m", "v2") for p in parts):
        raise ConfigError(f"avss_labels must list v1s, v1m and/or v2, got {cfg.avss_labels!r}")
    if cfg.train.gpu_resident:
        raise ConfigError("train.gpu_resident holds binary masks only; set it false for subset avss")


def _validate_fusion(m: ModelConfig) -> None:
    """A known fusion name, and every module-specific option set only where the module uses it.

    The published modules (tpavi, han, cmran, jca) have no spatial mode, temporal or bidirectional switch,
    and each takes only some sizing options (``FUSION_OPTIONS``); setting another would record a model
    that never ran, so it is refused by name before anything trains.
    """
    if m.fusion not in FUSIONS:
        raise ConfigError(f"model.fusion must be one of {'|'.join(FUSIONS)}, got {m.fusion!r}")
    takes = FUSION_OPTIONS[m.fusion]
    unused = [f"model.{k}={getattr(m, k)!r}" for k in SIZING_OPTIONS if getattr(m, k) is not None and k not in takes]
    if unused:
        known = ", ".join(f"model.{k}" for k in takes) or "none of them"
        raise ConfigError(f"{', '.join(unused)}: not an option of fusion {m.fusion!r}, which takes {known}; "
                          "drop it (or set it to null) or choose a module that has it")
    if m.fusion not in ("stbava", "none"):
        changed = [f"model.{k}={getattr(m, k)!r}" for k, v in STBAVA_SWITCHES.items() if getattr(m, k) != v]
        if changed:
            raise ConfigError(f"{', '.join(changed)}: ST-BAVA ablation switches, but model.fusion is "
                              f"{m.fusion!r}; drop them (--no-temporal, --no-bidirectional, --spatial-mode) or use "
                              "--fusion stbava")
    _validate_sizes(m)


def _validate_sizes(m: ModelConfig) -> None:
    depth, heads = model_option(m, "depth"), model_option(m, "num_heads")
    least = 0 if m.fusion == "stbava" else 1  # ST-BAVA at depth 0 is E + E into the decoder (thesis Fig 6.3)
    if depth is not None and depth < least:
        raise ConfigError(f"model.depth must be >= {least} for fusion {m.fusion!r}, got {depth}")
    if heads is not None and (heads < 1 or m.embed_dim % heads):
        raise ConfigError(f"model.num_heads must divide model.embed_dim={m.embed_dim}, got {heads}")
    for name in ("mlp_dim", "attn_dropout"):
        value = model_option(m, name)
        if value is not None and not (value >= 1 if name == "mlp_dim" else 0 <= value < 1):
            raise ConfigError(f"model.{name} out of range for fusion {m.fusion!r}: {value}")


def legacy_sizing(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A config saved before the sizing options were per module (checkpoint version 1), as built then.

    Such configs recorded ``depth`` / ``num_heads`` / ``mlp_dim`` / ``attn_dropout`` (and ``center_audio``)
    for every module, but only ST-BAVA used them (``none`` used ``center_audio``); the others were built
    with their published structure, which is what None means now.
    """
    model = data.get("model")
    if not isinstance(model, Mapping) or model.get("fusion", "stbava") in ("stbava", True):
        return data
    keep = ("center_audio",) if model.get("fusion") in ("none", False) else ()
    return {**data, "model": {k: v for k, v in model.items() if k not in SIZING_OPTIONS or k in keep}}
