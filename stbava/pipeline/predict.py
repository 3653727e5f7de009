"""``stbava predict``: segment the sounding objects of a user's own video (or frames + wav).

The media side (decoding, AVSBench sampling) is :mod:`stbava.data.video`; this module runs the model on it.
Windows: seconds [0,5), [5,10), ... A last partial window (the video is not a multiple of 5 s long) is
aligned to the end of the video instead, overlapping the previous window, and only its seconds not already
covered are written. A video shorter than 5 s (but at least one second) is padded by repeating its last
frame and last audio example (the AVSBench padding rule); masks are written for its real seconds only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.checkpoint import CheckpointFormatError, read_checkpoint
from stbava.config import EncoderConfig
from stbava.data.clips import DataError
from stbava.data.video import SR, MediaInput, read_frames_folder, read_video
from stbava.device import resolve_device
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.net import Net
from stbava.provenance import require_same_encoders

log = logging.getLogger(__name__)


def windows(seconds: int, t: int) -> list[tuple[int, int]]:
    """``(start, first_new)`` per window: start second of the T-second window, first second it writes."""
    if seconds <= t:
        return [(0, 0)]
    out = [(s, s) for s in range(0, seconds - t + 1, t)]
    covered = out[-1][0] + t
    if covered < seconds:
        out.append((seconds - t, covered))
    return out


def _window_inputs(media: MediaInput, start: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [t,224,224,3] and log-mel examples [t,1,96,64] of one window (padded by repetition if short)."""
    from stbava.data.transforms import waveform_to_examples

    idx = [min(start + k, len(media.frames) - 1) for k in range(t)]
    wav = media.audio[start * SR: (start + t) * SR]
    return media.frames[idx], waveform_to_examples(wav, SR, num_examples=t)


def _fusion_net_with_encoders(net: Net, enc_cfg: EncoderConfig, frames: int, payload: dict[str, Any],
                              dev: torch.device, search: WeightSearch | None = None) -> Net:
    """A stage-two net with the frozen encoders it was trained with as embedder.

    The weight files are located and checked by the digests the checkpoint records (``search``: other
    places to look); what else the fingerprint records (architecture, numerics) must match too.
    """
    from stbava.encoders.build import build_frozen_encoders
    from stbava.encoders.fingerprint import encoder_fingerprint
    from stbava.encoders.weights import locate_weights
    from stbava.pipeline.sources import LiveEmbedder

    enc_cfg = locate_weights(enc_cfg, payload.get("fingerprint"), search, subject=f"checkpoint {payload['path']}")
    require_same_encoders(
        payload.get("fingerprint"), encoder_fingerprint(enc_cfg, frames), subject=f"{payload['path']} was trained on",
        other="these encoder settings", error=CheckpointFormatError,
        fix="re-extract and retrain with these encoders, or use the checkpoint's own")
    image, vggish = build_frozen_encoders(enc_cfg, dev)
    return Net(net.model, LiveEmbedder(image, vggish, audio_adapters=False))


def predict_probs(net: Net, media: MediaInput, t: int, img_size: int, dev: torch.device) -> np.ndarray:
    """Sounding-object probabilities ``[seconds,224,224]`` for every second of ``media``, window by window."""
    from stbava.data.transforms import frames_to_sam_input

    n = len(media.frames)
    probs = np.zeros((n, 224, 224), np.float32)
    with torch.inference_mode():
        for start, first_new in windows(n, t):
            frames, mels = _window_inputs(media, start, t)
            x = frames_to_sam_input(list(frames), img_size).to(dev)
            logits = net(frames=x[None], log_mels=torch.from_numpy(mels)[None].to(dev))[0]
            p = torch.sigmoid(logits.float()).cpu().numpy()
            for k in range(t):
                if first_new <= start + k < n:
                    probs[start + k] = p[k]
    return probs


def run_predict(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, audio: str | Path | None = None,
                search: WeightSearch | None = None, device: str = "auto",
                video_name: str = "overlay.mp4") -> dict[str, Any]:
    """Segment ``input_path`` (video file or frames folder); write masks/, an overlay video and a summary.

    ``search``: where the encoders' weight files are looked for besides the paths the checkpoint records.
    """
    from stbava.encoders.image import image_size
    from stbava.pipeline.restore import restore_net

    src = Path(input_path)
    if not src.exists():
        raise DataError(f"input not found: {src}")
    media = read_frames_folder(src, Path(audio) if audio else None) if src.is_dir() else read_video(src)
    dev = resolve_device(device)
    payload = read_checkpoint(checkpoint)
    net, cfg = restore_net(payload, dev, search)
    if payload["kind"] == "fusion":
        net = _fusion_net_with_encoders(net, cfg.encoder, cfg.frames, payload, dev, search)
    probs = predict_probs(net, media, cfg.frames, image_size(cfg.encoder.name), dev)
    return _write_outputs(src, media, probs, Path(out), video_name, len(windows(len(media.frames), cfg.frames)))


def _write_outputs(src: Path, media: MediaInput, probs: np.ndarray, out: Path, video_name: str,
                   n_windows: int) -> dict[str, Any]:
    from stbava.viz import save_mask_png, write_overlay_video

    n = len(probs)
    masks = (probs > 0.5).astype(np.uint8)
    for sec in range(n):
        save_mask_png(masks[sec], out / "masks" / f"{src.stem}_{sec + 1}.png")
    full_masks = [_upsize(masks[i], media.originals[i].shape[:2]) for i in range(n)]
    video = out / video_name
    write_overlay_video(_same_size(media.originals), np.stack(_same_size_masks(full_masks, media.originals)), video,
                        fps=1)
    return {"input": str(src), "seconds": n, "windows": n_windows, "masks": str(out / "masks"),
            "overlay": str(video), "foreground_fraction": [float(m.mean()) for m in masks]}


def _upsize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 127


def _same_size(imgs: list[np.ndarray]) -> np.ndarray:
    h, w = imgs[0].shape[:2]
    return np.stack([i if i.shape[:2] == (h, w) else _squash_to(i, h, w) for i in imgs])


def _same_size_masks(masks: list[np.ndarray], imgs: list[np.ndarray]) -> list[np.ndarray]:
    h, w = imgs[0].shape[:2]
    return [m if m.shape == (h, w) else _upsize(m.astype(np.uint8), (h, w)) for m in masks]


def _squash_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
