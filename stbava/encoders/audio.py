"""Frozen VGGish: torchvggish's own ``VGG`` network, optional PCA, variance-preserving random init.

Why Kaiming init: with PyTorch's default init the nine ReLU layers shrink the signal until the 128-d
embedding is almost constant (output std 0.005), and a fusion model trained on it ignores audio
entirely (ENV-NOTES §7). Kaiming-normal (fan_in, ReLU) with zero biases keeps the scale, so the
random default still tells different sounds apart.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stbava import thirdparty
from stbava.encoders.checkpoints import describe_state, load_state_file
from stbava.state_dict import CheckpointError, load_strict

logger = logging.getLogger(__name__)

EXAMPLE_SHAPE = (1, 96, 64)  # one 0.96 s log-mel example: 96 frames x 64 mel bands
EMBED_DIM = 128


def _new_vgg() -> nn.Module:
    tv = thirdparty.vggish_model()
    # postprocess=False: torchvggish's Postprocessor() downloads PCA params in __init__; PCA is applied
    # by embed_audio from buffers instead.
    return tv.VGG(tv.make_layers(), postprocess=False)


def kaiming_init_(model: nn.Module, seed: int) -> nn.Module:
    """Kaiming-normal (fan_in, relu) weights and zero biases for every conv/linear layer, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _pca_tensors(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    params = load_state_file(path, "vggish_pca")
    if not {"pca_eigen_vectors", "pca_means"} <= set(params):
        raise CheckpointError(
            f"VGGish PCA file {path} lacks pca_eigen_vectors / pca_means (found {sorted(params)[:5]}; it looks "
            f"like {describe_state(params)})"
        )
    vecs = torch.as_tensor(np.asarray(params["pca_eigen_vectors"])).float()
    means = torch.as_tensor(np.asarray(params["pca_means"])).float().reshape(-1, 1)
    if tuple(vecs.shape) != (EMBED_DIM, EMBED_DIM) or tuple(means.shape) != (EMBED_DIM, 1):
        raise CheckpointError(
            f"VGGish PCA file {path}: expected pca_eigen_vectors [128,128] and pca_means [128], got "
            f"{list(vecs.shape)} and {list(means.shape)}"
        )
    return vecs, means


def build_vggish(checkpoint: str | Path | None = None, pca: str | Path | None = None,
                 seed: int = 0) -> nn.Module:
    """Build torchvggish's ``VGG(make_layers(), postprocess=False)``, eval mode, frozen.

    Args:
        checkpoint: ``vggish-10086976.pth`` (loaded strictly); None -> Kaiming random init from ``seed``.
        pca: optional PCA parameter file (official ``.pth`` or ``.npz``); stored as non-persistent
            buffers ``pca_eigen_vectors`` [128,128] / ``pca_means`` [128,1] that :func:`embed_audio` applies.
        seed: seed of the random init when ``checkpoint`` is None.

    Raises:
        CheckpointError: missing/unreadable file or keys/shapes that are not VGGish's.
    """
    pca_params = None if pca is None else _pca_tensors(pca)  # fail fast, before building 72 M parameters
    with torch.device("meta"):  # every parameter is overwritten below: skip a throw-away init of 72 M
        model = _new_vgg()
    if checkpoint is None:
        logger.info("no VGGish checkpoint: VGGish random-initialised (Kaiming, seed=%d)", seed)
        model = kaiming_init_(model.to_empty(device="cpu"), seed)
    else:
        sd = load_state_file(checkpoint, "vggish")
        hint = "" if "features.0.weight" in sd else f"The file looks like {describe_state(sd)}."
        load_strict(model, sd, f"VGGish checkpoint {checkpoint}", hint=hint, assign=True)
        model = model.float()
    if pca_params is not None:
        vecs, means = pca_params
        model.register_buffer("pca_eigen_vectors", vecs, persistent=False)
        model.register_buffer("pca_means", means, persistent=False)
    model.eval()
    model.requires_grad_(False)
    return model


def embed_audio(vggish: nn.Module, examples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """VGGish embeddings of log-mel examples (no gradients: the audio encoder is always frozen).

    Args:
        vggish: a model from :func:`build_vggish`.
        examples: ``[N,1,96,64]`` log-mel examples (REFERENCE §2), tensor or numpy.

    Returns:
        ``[N,128]`` float embeddings on the model's device: ReLU'd raw embeddings, or PCA-whitened,
        clipped and quantised to 0..255 (torchvggish's Postprocessor) when PCA buffers are present.
    """
    param = next(vggish.parameters())
    x = torch.as_tensor(examples).to(device=param.device, dtype=param.dtype)
    if x.ndim != 4 or tuple(x.shape[1:]) != EXAMPLE_SHAPE:
        raise ValueError(f"expected log-mel examples [N,1,96,64], got shape {tuple(x.shape)}")
    with torch.no_grad():
        emb = vggish(x)
        vecs: Any = getattr(vggish, "pca_eigen_vectors", None)
        if vecs is not None:
            pp = thirdparty.vggish_model().Postprocessor.__new__(thirdparty.vggish_model().Postprocessor)
            pp._pca_matrix, pp._pca_means = vecs.to(emb.dtype), vggish.pca_means.to(emb.dtype)
            emb = pp.postprocess(emb)  # squeezes a single example to [128]; reshaped back below
    return emb.reshape(x.shape[0], EMBED_DIM)
