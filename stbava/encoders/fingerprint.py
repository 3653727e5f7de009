"""A stable description of everything that determines the cached embeddings.

Why: a feature cache is only valid for the exact encoders (architecture, weights, init seed) and
preprocessing that produced it. The fingerprint is a JSON-able dict stored in the cache manifest; a
reader compares it with the one for its own config and refuses a mismatch. Checkpoint files are
identified by their content (sha256), not their path, so moving a file keeps the cache valid.
"""

from __future__ import annotations

from typing import Any

from stbava import thirdparty
from stbava.config import EncoderConfig
from stbava.digest import file_sha256
from stbava.encoders import hiera
from stbava.encoders.audio import EMBED_DIM
from stbava.encoders.checkpoints import require_file
from stbava.encoders.image import IMAGE_ENCODERS, NORM_EPS, PIXEL_MEAN, PIXEL_STD, grid_size, image_size
from stbava.provenance import fingerprint_digest  # noqa: F401 (the digest users quote)

SCHEMA = 2  # bump when the meaning of a field (or any preprocessing step) changes; 2: numerics recorded


def _weights(path: str | None, what: str, random_desc: str) -> str:
    if path is None:
        return random_desc
    return "sha256:" + file_sha256(require_file(path, what))


def encoder_fingerprint(enc: EncoderConfig, frames: int) -> dict[str, Any]:
    """Fingerprint of the stage-one encoders and preprocessing.

    Args:
        enc: encoder section of the config (name, checkpoints, PCA file, seed).
        frames: frames (and 0.96 s audio examples) per clip.

    Returns:
        A JSON-able dict; compare with ``==`` or via :func:`fingerprint_digest`.
    """
    img, grid = image_size(enc.name), grid_size(enc.name)  # ConfigError for an unknown name
    _, vp = thirdparty.vggish_mel()
    if hiera.is_sam2(enc.name):
        image, numerics = _sam2_image(enc), {"image_amp": enc.amp}
    else:
        image, numerics = _sam_image(enc, img, grid), {"sdpa": bool(enc.sdpa), "image_amp": enc.amp}
    return {
        "schema": SCHEMA,
        "frames": int(frames),
        # what changes the values without changing the weights: the attention kernel and the autocast dtype
        "numerics": numerics,
        "image": image,
        "audio": _audio(enc, vp),
    }


def _sam2_image(enc: EncoderConfig) -> dict[str, Any]:
    """SAM 2's image section: family, package config + overrides, the cached levels, weights, preprocessing."""
    config, overrides = hiera.SAM2_CONFIGS[enc.name]
    geometry = hiera.decoder_geometry(enc.name, enc.high_res_features)
    g = geometry["grid"]
    levels = [f"image_embed [256,{g},{g}] + no_mem_embed"]
    if geometry["high_res"]:
        levels += [f"high_res s0 [32,{4 * g},{4 * g}] (conv_s0)", f"high_res s1 [64,{2 * g},{2 * g}] (conv_s1)"]
    return {
        "family": "sam2",
        "encoder": enc.name,
        "arch": "sam2 build_sam2 SAM2Base (forward_image, _prepare_backbone_features)",
        "config": config,
        "overrides": list(overrides),
        "sam2_version": thirdparty.distribution_version("sam2"),
        "img_size": geometry["img_size"],
        "grid": g,
        "levels": levels,
        "packing": "channels: embed, pixel_unshuffle(s0, 4), pixel_unshuffle(s1, 2) (stbava.feature_levels)",
        "decoder_flags": geometry["decoder_flags"],
        "weights": _weights(enc.sam_checkpoint, "sam", f"random-init seed={enc.seed} (build_sam2 default init)"),
        "preprocess": {
            "decode": "RGB uint8",
            "resize": "to img_size x img_size (aspect not kept), bilinear antialias on [0,1] (SAM2Transforms)",
            "normalise": "(x/255 - mean) / std",
            "mean": list(hiera.SAM2_MEAN),
            "std": list(hiera.SAM2_STD),
        },
    }


def _sam_image(enc: EncoderConfig, img: int, grid: int) -> dict[str, Any]:
    """SAM's image section (unchanged since schema 2, so SAM caches keep their fingerprints)."""
    arch = dict(IMAGE_ENCODERS[enc.name])
    arch["global_attn_indexes"] = list(arch["global_attn_indexes"])
    return {
            "encoder": enc.name,
            "arch": "segment_anything ImageEncoderViT",
            "kwargs": dict(arch, norm_eps=NORM_EPS),
            "img_size": img,
            "grid": grid,
            "weights": _weights(enc.sam_checkpoint, "sam", f"random-init seed={enc.seed} (SAM default init)"),
            "preprocess": {
                "decode": "RGB uint8",
                "resize": "longest side to img_size, side = int(side*scale+0.5), PIL bilinear",
                "normalise": "(x - pixel_mean) / pixel_std on 0..255",
                "pixel_mean": list(PIXEL_MEAN),
                "pixel_std": list(PIXEL_STD),
                "pad": "zeros bottom/right to img_size after normalisation",
            },
        }


def _audio(enc: EncoderConfig, vp: Any) -> dict[str, Any]:
    return {
        "arch": "torchvggish VGG(make_layers(), postprocess=False)",
        "embed_dim": EMBED_DIM,
        "weights": _weights(enc.vggish_checkpoint, "vggish",
                            f"random-init seed={enc.seed} (kaiming_normal fan_in relu, zero bias)"),
        "pca": None if enc.vggish_pca is None else _weights(enc.vggish_pca, "vggish_pca", ""),
        "log_mel": {
            "sample_rate": vp.SAMPLE_RATE,
            "stft_window_s": vp.STFT_WINDOW_LENGTH_SECONDS,
            "stft_hop_s": vp.STFT_HOP_LENGTH_SECONDS,
            "mel_bands": vp.NUM_MEL_BINS,
            "mel_min_hz": vp.MEL_MIN_HZ,
            "mel_max_hz": vp.MEL_MAX_HZ,
            "log_offset": vp.LOG_OFFSET,
            "example_window_s": vp.EXAMPLE_WINDOW_SECONDS,
            "example_hop_s": vp.EXAMPLE_HOP_SECONDS,
            "examples": "first `frames` examples; pad by repeating the last",
            "input": "mono (channel mean), int16 / 32768, resampled to sample_rate",
        },
    }
