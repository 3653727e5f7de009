"""Readers for AVSBench files (frames, GT masks, wav) that fail with a message naming the file and the fix.

Every reader decodes the whole file, so a truncated PNG or a corrupt wav is caught here (and by
``stbava check-data``) rather than deep inside feature extraction. Audio follows REFERENCE §2 steps 2-4
(the AVSBench/torchvggish reading path) so cached VGGish features match the published preprocessing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from stbava.data.clips import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# One VGGish example needs 96 STFT frames of 400 samples at hop 160: 400 + 95 * 160 samples (0.975 s).
MIN_AUDIO_SAMPLES = 400 + 95 * 160


def _check_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}; {fix}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty (zero-byte) {what}; {fix}")


def _open_image(path: Path, what: str, fix: str) -> Image.Image:
    """Open and fully decode an image (PIL is lazy; ``load`` surfaces truncation and codec errors)."""
    _check_file(path, what, fix)
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable {what} ({e}); {fix}") from None
    return img


def read_frame(path: str | Path) -> np.ndarray:
    """Read one video frame as RGB.

    Args:
        path: image file (AVSBench: 224x224 PNG). Any size and PIL mode is accepted; the image encoder
            resizes, and grey/palette/RGBA images are converted to RGB (alpha dropped).

    Returns:
        uint8 array [H,W,3], RGB channel order (SAM expects RGB; REFERENCE §10.19).
    """
    p = Path(path)
    img = _open_image(p, "video frame", "re-extract the frames of this clip or check --data-root")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_clip_frames(paths: list[Path] | tuple[Path, ...]) -> list[np.ndarray]:
    """Read the frames of one clip with ``read_frame``; they must share one size (they are encoded as a stack).

    Any common size is fine (the encoder resizes like SAM); a frame whose size differs from the clip's first
    frame is a DataError naming it.

    Returns:
        uint8 arrays [H,W,3], one per path.
    """
    frames = [read_frame(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.shape != frames[0].shape:
            raise DataError(
                f"{p}: frame is {f.shape[1]}x{f.shape[0]} but {Path(paths[0]).name} of the same clip is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}; re-extract the frames of this clip at one size"
            )
    return frames


def read_mask(path: str | Path, size: int = 224) -> np.ndarray:
    """Read one ground-truth mask and binarise it (REFERENCE §1.3, §10.11).

    Foreground is any non-zero value: of the 8-bit grey conversion for grey/RGB files, and of the palette
    *index* for palette ('P') files, which is what the official MS3 loader reads. This makes 0/255 and
    0/1 coded files both work.

    Args:
        path: mask PNG.
        size: expected side length; metrics are defined at 224x224, so other sizes are an error.

    Returns:
        float32 array [size,size] with values in {0, 1}.
    """
    p = Path(path)
    img = _open_image(p, "ground-truth mask", "re-download the AVSBench gt_masks for this clip")
    if img.size != (size, size):
        raise DataError(
            f"{p}: mask is {img.size[0]}x{img.size[1]}, expected {size}x{size} (AVSBench metrics are computed "
            f"at {size}x{size}); resize the mask with nearest-neighbour or re-download it"
        )
    if img.mode in ("P", "1", "L", "I", "I;16", "F"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L"))
    return (arr > 0).astype(np.float32)


def _read_samples(p: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    fix = "re-extract the 16 kHz wav from the video (e.g. ffmpeg -i VIDEO.mp4 -ac 1 -ar 16000 OUT.wav)"
    _check_file(p, "audio file", fix)
    try:
        info = sf.info(str(p))
        # 16-bit PCM is read exactly as AVSBench does (int16 / 32768); any other encoding as float64,
        # which keeps NaN/inf visible instead of letting a conversion to int16 hide them.
        if info.subtype == "PCM_16":
            data, sr = sf.read(str(p), dtype="int16", always_2d=True)
            x = data.astype(np.float64) / 32768.0
        else:
            x, sr = sf.read(str(p), dtype="float64", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # soundfile raises LibsndfileError(RuntimeError)
        raise DataError(f"{p}: unreadable audio file ({e}); {fix}") from None
    return x, int(sr)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a wav as mono float at ``sr`` Hz, the way AVSBench feeds VGGish (REFERENCE §2 steps 2-4).

    - 16-bit PCM is scaled by 1/32768 to [-1, 1); other encodings are read as float by soundfile.
    - Stereo / multi-channel audio is downmixed by averaging the channels.
    - Other sample rates are resampled with resampy (what torchvggish uses; first call JIT-compiles ~1 s).
    - A silent file is fine (log-mel of silence is the constant ln(0.01)).
    - Shorter than 5 s is fine: fewer examples result and ``waveform_to_examples`` pads them by repeating
      the last one (REFERENCE §2 step 9). Shorter than one 0.96 s example (0.975 s of samples) is an error.

    Args:
        path: audio file (wav; anything libsndfile reads).
        sr: target sample rate (VGGish: 16000).

    Returns:
        float32 array [num_samples], mono.

    Raises:
        DataError: missing, zero-byte or undecodable file; NaN/inf samples; too short.
    """
    p = Path(path)
    x, file_sr = _read_samples(p)
    if x.shape[0] == 0:
        raise DataError(f"{p}: audio file has no samples; re-extract the audio of this clip")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{p}: audio contains NaN or inf samples; re-extract the audio of this clip")
    x = x.mean(axis=1)
    if file_sr != sr:
        import resampy

        log.debug("resampling %s from %d Hz to %d Hz", p, file_sr, sr)
        x = resampy.resample(x, file_sr, sr)
    min_samples = int(np.ceil(MIN_AUDIO_SAMPLES * sr / SAMPLE_RATE))
    if x.shape[0] < min_samples:
        raise DataError(
            f"{p}: audio is {x.shape[0] / sr:.3f} s long, shorter than one 0.96 s VGGish example "
            f"({min_samples} samples at {sr} Hz); use a longer clip"
        )
    return x.astype(np.float32)
