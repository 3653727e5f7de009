"""Published ST-BAVA weights (``Decoder.state_dict()``, REFERENCE §9.2) -> :class:`AVSModel` weights.

The published file holds ``audio_embed_layer.*``, ``layers.{l}.*``, ``mask_decoder.*`` and
``pe_layer.positional_encoding_gaussian_matrix`` under the same names our model uses, plus parts we do not
take from it:

- ``image_encoder.*``: the frozen SAM ViT (users load it from the official SAM file) and, under
  ``image_encoder.prompt_generator.*``, the audio adapters (:func:`convert_official_adapters`);
- ``prompt_encoder.*``: constructed but never called by the published model (REFERENCE §5), so unused.

Everything else must match exactly: a missing, unexpected or mis-shaped key is a :class:`CheckpointError`
that lists them (the published code loads with ``strict=False`` and silently skips, REFERENCE §10.4).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from stbava.config import Config, model_option
from stbava.model.avs_model import AVSModel
from stbava.model.build import model_kwargs
from stbava.state_dict import CheckpointError, check_state

IGNORED_PREFIXES = ("image_encoder.", "prompt_encoder.")
ADAPTER_PREFIX = "image_encoder.prompt_generator."


def _layer_count(sd: Mapping[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith("layers.")})


def convert_official_state(sd: Mapping[str, torch.Tensor], cfg: Config, *, grid: int, img_size: int,
                           source: str = "published ST-BAVA checkpoint") -> dict[str, torch.Tensor]:
    """Map a published ``Decoder.state_dict()`` to :class:`AVSModel` keys (fusion + decoder + PE).

    Args:
        sd: the published state dict (``module.`` prefixes already stripped).
        cfg: target config; ``model.depth`` must equal the file's layer count and the ablation switches
            must describe the full published model. ``spatial_mode`` may be either (the weights are the
            same; only ``reference`` reproduces the published logits).
        grid, img_size: the embedding grid and encoder input side of the published model's SAM (64 / 1024).
        source: named in errors (e.g. the file path).

    Returns:
        ``{name: tensor}`` loadable strictly into ``build_model(cfg, grid=grid, img_size=img_size)``.

    Raises:
        CheckpointError: ablated config, or missing/unexpected/mis-shaped keys (all listed).
    """
    m = cfg.model
    if not (m.fusion == "stbava" and m.temporal and m.bidirectional):
        raise CheckpointError(f"{source}: the published model is the full ST-BAVA; set model.fusion to stbava "
                              "and model.temporal and model.bidirectional to true to import it")
    with torch.device("meta"):  # only names and shapes are needed
        target = AVSModel(**model_kwargs(cfg, grid=grid, img_size=img_size))
    ours = {k: v for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
    n = _layer_count(ours)
    hint = f"The file has {n} ST-BAVA layers: set model.depth={n}." if n != model_option(m, "depth") else ""
    check_state(target, ours, f"{source} (published ST-BAVA layout)", hint=hint)
    return {k: ours[k] for k in target.state_dict()}


def convert_official_adapters(sd: Mapping[str, torch.Tensor], cfg: Config, *, width: int, blocks: int,
                              source: str = "published ST-BAVA checkpoint") -> dict[str, torch.Tensor]:
    """The audio adapters of a published file, keyed as in ``AdaptedImageEncoder`` (``prompt_generator.*``).

    Args:
        sd: the published state dict.
        cfg: gives ``model.adapter_hidden`` (and the encoder name for messages).
        width, blocks: the image encoder's embedding width and block count (1280 / 32 for vit_h).
        source: named in errors.

    Returns:
        ``{"prompt_generator.lightweight_mlp_{i}.0.weight": ..., "prompt_generator.shared_mlp.bias": ...}``,
        or ``{}`` when the file carries no adapters.

    Raises:
        CheckpointError: adapter keys that do not fit ``cfg.encoder.name`` / ``adapter_hidden``.
    """
    from stbava.model.adapters import AudioPromptGenerator

    found = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith(ADAPTER_PREFIX)}
    if not found:
        return {}
    with torch.device("meta"):
        holder = nn.Module()
        holder.prompt_generator = AudioPromptGenerator(width, blocks, 128,
                                                       cfg.model.adapter_hidden)
    hint = (f"Expected adapters for --encoder {cfg.encoder.name} (width {width}, "
            f"{blocks} blocks) with hidden width model.adapter_hidden={cfg.model.adapter_hidden}.")
    check_state(holder, found, f"{source} (image_encoder.prompt_generator.*)", hint=hint)
    return {k: found[k] for k in holder.state_dict()}
