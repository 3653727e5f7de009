"""Model-input transforms: frames -> SAM-sized tensors, waveform -> VGGish log-mel examples.

The image side reproduces SAM's ``ResizeLongestSide`` (REFERENCE §3) without torchvision; normalisation
and padding are left to the image encoder (it mirrors ``Sam.preprocess``). The audio side is REFERENCE §2
steps 5-9, computed with torchvggish's own numpy ``mel_features`` so features match the published pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from stbava.data.clips import DataError
from stbava.thirdparty import vggish_mel


def sam_resize_shape(h: int, w: int, img_size: int) -> tuple[int, int]:
    """Output (h', w') of SAM's ``ResizeLongestSide.get_preprocess_shape``: longest side -> ``img_size``.

    The one copy of this rule: :func:`frames_to_sam_input` resizes frames with it, and the zero-shot prompts
    (``stbava.zero_shot.prompts``) and their logits' crop use it too, so prompts land where the frame's pixels
    are in the encoder input (h' x w', padded bottom/right to img_size x img_size).
    """
    scale = img_size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def frames_to_sam_input(frames: Sequence[np.ndarray], img_size: int) -> torch.Tensor:
    """Resize RGB frames like SAM's ``ResizeLongestSide`` (PIL bilinear) and stack them.

    The square 224x224 AVSBench frames become img_size x img_size, which is also what the published
    ST-BAVA loader's ``Resize((1024, 1024))`` gives (REFERENCE §3). Non-square frames keep their aspect ratio
    and are padded later by the encoder.

    Args:
        frames: N uint8 arrays [H,W,3] (RGB), all of the same size.
        img_size: target length of the longest side (SAM: 1024; the tiny encoder: 256).

    Returns:
        float32 tensor [N,3,h',w'] on the 0..255 scale; not normalised, not padded.
    """
    if len(frames) == 0:
        raise DataError("frames_to_sam_input got no frames")
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise DataError(f"frames of one clip must share a size, got {sorted(shapes)}; re-extract the frames")
    h, w, c = frames[0].shape if frames[0].ndim == 3 else (*frames[0].shape, 1)
    if c != 3 or frames[0].dtype != np.uint8:
        raise DataError(f"expected uint8 RGB frames [H,W,3], got {frames[0].dtype} {frames[0].shape}")
    nh, nw = sam_resize_shape(h, w, img_size)
    out = np.empty((len(frames), nh, nw, 3), np.float32)
    for i, f in enumerate(frames):
        if (nh, nw) == (h, w):
            out[i] = f
        else:
            out[i] = np.asarray(Image.fromarray(f).resize((nw, nh), Image.BILINEAR))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def frames_to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB frames as they are: uint8 ``[H,W,3]`` each -> float32 ``[N,3,H,W]`` on the 0..255 scale.

    For SAM 2, whose image encoder resizes every frame to its square input itself (SAM2Transforms).
    """
    if len(frames) == 0:
        raise DataError("frames_to_tensor got no frames")
    shapes = {(f.shape, f.dtype) for f in frames}
    if len(shapes) != 1 or frames[0].ndim != 3 or frames[0].shape[2] != 3 or frames[0].dtype != np.uint8:
        raise DataError(f"expected uint8 RGB frames [H,W,3] of one size, got {sorted(map(str, shapes))}")
    return torch.from_numpy(np.stack(frames).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def log_mel(wav: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Log-mel spectrogram [num_stft_frames, 64] (float64) with VGGish's parameters (REFERENCE §2 steps 5-7)."""
    mel_features, params = vggish_mel()
    x = np.asarray(wav)
    if x.ndim > 1:  # (samples, channels), as torchvggish expects
        x = x.mean(axis=1)
    if sr != params.SAMPLE_RATE:
        import resampy

        x = resampy.resample(x, sr, params.SAMPLE_RATE)
    return mel_features.log_mel_spectrogram(
        x,
        audio_sample_rate=params.SAMPLE_RATE,
        log_offset=params.LOG_OFFSET,
        window_length_secs=params.STFT_WINDOW_LENGTH_SECONDS,
        hop_length_secs=params.STFT_HOP_LENGTH_SECONDS,
        num_mel_bins=params.NUM_MEL_BINS,
        lower_edge_hertz=params.MEL_MIN_HZ,
        upper_edge_hertz=params.MEL_MAX_HZ,
    )


def waveform_to_examples(wav: np.ndarray, sr: int = 16000, num_examples: int = 5) -> np.ndarray:
    """VGGish input examples for one clip, fixed to ``num_examples`` (one per frame).

    Example k covers [0.96k, 0.96(k+1)) s and is paired with frame k+1 (REFERENCE §2). Equals
    ``torchvggish.vggish_input.waveform_to_examples`` for 16 kHz mono input, then fixed in length as the
    AVSBench preprocessing does: too few examples (e.g. a 2 s wav) are padded by repeating the last one;
    extra examples are dropped (the published script crashed on those instead).

    Args:
        wav: float waveform [num_samples] (or [num_samples, channels], averaged), roughly in [-1, 1].
        sr: its sample rate; other than 16000 is resampled with resampy.
        num_examples: examples to return (frames per clip).

    Returns:
        float32 array [num_examples, 1, 96, 64].
    """
    mel_features, params = vggish_mel()
    lm = log_mel(wav, sr)
    win = round(params.EXAMPLE_WINDOW_SECONDS / params.STFT_HOP_LENGTH_SECONDS)
    hop = round(params.EXAMPLE_HOP_SECONDS / params.STFT_HOP_LENGTH_SECONDS)
    if lm.shape[0] < win:
        raise DataError(
            f"audio of {np.asarray(wav).shape[0] / sr:.3f} s is shorter than one 0.96 s VGGish example; "
            "use a clip of at least 1 s"
        )
    ex = mel_features.frame(lm, window_length=win, hop_length=hop).astype(np.float32)
    if ex.shape[0] < num_examples:
        ex = np.concatenate([ex, np.repeat(ex[-1:], num_examples - ex.shape[0], axis=0)])
    return np.ascontiguousarray(ex[:num_examples, None])
