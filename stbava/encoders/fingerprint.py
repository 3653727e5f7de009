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
    arch = dict(IMAGE_ENCODERS[enc.name])
    arch["global_attn_indexes"] = list(arch["global_attn_indexes"])
    return {
        "schema": SCHEMA,
        "frames": int(frames),
        # what changes the values without changing the weights: the attention kernel and the autocast dtype
        "numerics": {"sdpa": bool(enc.sdpa), "image_amp": enc.amp},
        "image": {
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
        },
        "audio": {
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
        },
    }
