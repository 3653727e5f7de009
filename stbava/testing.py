"""Test utilities: weight files in the official layouts, made from random-initialised models.

Why: tests must prove that real checkpoints load exactly, but the real files are large downloads. These
writers produce files with the same key layout and container format (a ``torch.save``'d plain state
dict; numpy arrays for the PCA file) so the loading code paths are the real ones.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stbava import thirdparty
from stbava.encoders.audio import build_vggish
from stbava.encoders.image import grid_size, image_size, new_sam_image_encoder


def build_sam(name: str = "tiny", seed: int = 0) -> nn.Module:
    """A full ``segment_anything`` ``Sam`` (encoder + prompt encoder + mask decoder) as ``_build_sam`` makes it.

    The encoder uses our ``IMAGE_ENCODERS[name]`` kwargs, so ``tiny`` works too. SAM initialises
    ``pos_embed`` and the rel-pos tables to zero; here they get small random values so a loading test
    notices if they are dropped (a trained checkpoint has them non-zero).
    """
    m = thirdparty.sam_modeling()
    img, grid = image_size(name), grid_size(name)
    encoder = new_sam_image_encoder(name, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        sam = m.Sam(
            image_encoder=encoder,
            prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                           input_image_size=(img, img), mask_in_chans=16),
            mask_decoder=m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        )
        with torch.no_grad():
            for pname, p in sam.image_encoder.named_parameters():
                if pname == "pos_embed" or ".rel_pos_" in pname:
                    p.normal_(0.0, 0.02)
    return sam.eval()


def write_fake_sam_checkpoint(path: str | Path, name: str = "tiny", seed: int = 0) -> Path:
    """Save ``build_sam(name, seed).state_dict()`` like the official ``sam_vit_*.pth`` (plain dict)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_sam(name, seed).state_dict(), path)
    return path


def write_fake_vggish_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save a Kaiming-initialised VGGish state dict with the keys of ``vggish-10086976.pth``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_vggish(seed=seed).state_dict(), path)
    return path


def fake_pca_params(seed: int = 0) -> dict[str, np.ndarray]:
    """PCA parameters shaped like the release: orthonormal ``pca_eigen_vectors`` [128,128] float64,
    ``pca_means`` [128] float64 (means around the scale of raw VGGish outputs)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    return {"pca_eigen_vectors": q, "pca_means": rng.uniform(0.0, 1.0, 128)}


def write_fake_vggish_pca(path: str | Path, seed: int = 0, numpy1_pickle: bool = True) -> Path:
    """Write PCA params as the release does (numpy arrays pickled by ``torch.save``), or ``.npz``.

    Args:
        path: ``.pth`` -> torch file holding numpy arrays; ``.npz`` -> ``np.savez``.
        seed: seed of the parameters (see :func:`fake_pca_params`).
        numpy1_pickle: for ``.pth``, write the legacy (pre-zip) torch format and name the numpy helper
            ``numpy.core.multiarray._reconstruct``, as a file saved in 2019 with numpy 1.x does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = fake_pca_params(seed)
    if path.suffix == ".npz":
        np.savez(path, **params)
        return path
    if not numpy1_pickle:
        torch.save(params, path)
        return path
    buf = io.BytesIO()
    torch.save(params, buf, _use_new_zipfile_serialization=False)
    # Protocol-2 GLOBAL opcodes are newline-terminated text, so renaming the module keeps the stream valid.
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)
    return path
