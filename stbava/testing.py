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


def write_test_video(path: str | Path, seconds: float, *, fps: int = 10, size: tuple[int, int] = (64, 48),
                     rate: int = 16000, layout: str = "mono", seed: int = 0) -> Path:
    """An H.264 + AAC MP4 whose picture changes only at whole seconds (one flat colour plus a bar per second).

    Each second ``k`` shows a grey frame with a random colour bar whose width depends on ``k``; the audio is
    a tone whose pitch changes every second (the same on every channel). ``seconds`` may be fractional.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    n_frames = round(seconds * fps)
    t = np.arange(round(seconds * rate)) / rate
    wav = (0.3 * np.sin(2 * np.pi * (220 + 110 * (t.astype(int) % 5)) * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=rate)
        aus.layout = layout
        channels = len(av.AudioLayout(layout).channels)
        img = np.full((h, w, 3), 128, np.uint8)
        for i in range(n_frames):
            if i % fps == 0:  # a new picture at every whole second
                k = i // fps
                img = np.full((h, w, 3), 128, np.uint8)
                img[h // 4: 3 * h // 4, : max(2, w * (k % 4 + 1) // 5)] = rng.integers(0, 256, 3, dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        for i in range(0, len(wav), 1024):
            chunk = np.repeat(wav[None, i:i + 1024], channels, axis=0)
            fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            fr.sample_rate, fr.pts = rate, i
            for p in aus.encode(fr):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    return path


def build_sam2_by_hand(name: str = "sam2_mini", seed: int = 0) -> nn.Module:
    """A whole SAM 2 model from ``sam2.build_sam.build_sam2`` of ``name``'s config, with no stbava code between.

    Parameters that its init leaves at zero (Hiera's ``pos_embed``, ...) get small random values, so a loading
    test notices if they are dropped (a trained checkpoint has them non-zero).
    """
    from stbava.encoders.hiera import SAM2_CONFIGS

    config, overrides = SAM2_CONFIGS[name]
    build = thirdparty.sam2_module("build_sam")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build.build_sam2(config, ckpt_path=None, device="cpu", mode="eval",
                                 hydra_overrides_extra=list(overrides))
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
    return model


def write_fake_sam2_checkpoint(path: str | Path, name: str = "sam2_mini", seed: int = 0) -> Path:
    """Save ``{"model": build_sam2_by_hand(name, seed).state_dict()}``, the layout of ``sam2.1_hiera_*.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_sam2_by_hand(name, seed).state_dict()}, path)
    return path
