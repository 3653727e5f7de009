"""``stbava predict``: segment the sounding objects of a user's own video (or frames + wav).

AVSBench sampling, applied to any video: one frame per second, taken 15/16 s into the second, squashed to
224x224 as AVSBench's preprocessing does; 16 kHz mono audio; windows of T = 5 seconds.

Windows: seconds [0,5), [5,10), ... A last partial window (the video is not a multiple of 5 s long) is
aligned to the end of the video instead, overlapping the previous window, and only its seconds not already
covered are written. A video shorter than 5 s (but at least one second) is padded by repeating its last
frame and last audio example (the AVSBench padding rule); masks are written for its real seconds only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.data.clips import DataError

log = logging.getLogger(__name__)

SR = 16000
FRAME_OFFSET_S = 15 / 16  # AVSBench keeps the 16th of 16 samples per second (REFERENCE §1.3)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class MediaInput:
    """One frame per second (uint8 [N,224,224,3]), original-resolution copies for overlays, 16 kHz mono audio."""

    frames: np.ndarray
    originals: list[np.ndarray]
    audio: np.ndarray
    fps_out: float = 1.0


def _squash(img: np.ndarray, size: int = 224) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def read_video(path: Path, max_side: int = 640) -> MediaInput:
    """Decode ``path`` with PyAV: frames at l + 15/16 s for every whole second, audio to 16 kHz mono."""
    import av
    from PIL import Image

    try:
        container = av.open(str(path))
    except Exception as e:  # av raises several error types for unreadable inputs
        raise DataError(f"{path}: cannot open video ({type(e).__name__}: {e}); is it a video file?") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        if not container.streams.audio:
            raise DataError(f"{path}: the video has no audio track; stbava segments *sounding* objects and needs "
                            "the sound (or pass a folder of frames plus a wav)")
        picked: list[np.ndarray] = []
        originals: list[np.ndarray] = []
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        def take(frame) -> None:
            img = frame.to_ndarray(format="rgb24")
            picked.append(_squash(img))
            scale = max_side / max(img.shape[:2])
            if scale < 1:
                img = np.asarray(Image.fromarray(img).resize(
                    (int(img.shape[1] * scale) // 2 * 2, int(img.shape[0] * scale) // 2 * 2)))
            originals.append(img)

        last, last_t = None, -1.0
        try:
            for frame in container.decode(vstream):
                last_t = float(frame.time) if frame.time is not None else 0.0
                last = frame
                while last_t >= len(picked) + FRAME_OFFSET_S - 1e-6:
                    take(frame)
            # The video may end inside its last second before the 15/16 s sampling point: use its last frame.
            if last is not None and last_t >= len(picked):
                take(last)
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: video stream is corrupt ({e})") from None
        container.seek(0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        chunks = []
        try:
            for af in container.decode(container.streams.audio[0]):
                for out in resampler.resample(af):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: audio stream is corrupt ({e})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    seconds = min(len(picked), int(len(audio) // SR))
    if seconds < 1:
        raise DataError(f"{path}: too short: {len(audio) / SR:.2f} s of audio and {len(picked)} sampled frame(s); "
                        "at least one whole second with sound is needed")
    return MediaInput(np.stack(picked[:seconds]), originals[:seconds], audio[: seconds * SR])


def read_frames_folder(folder: Path, wav: Path | None = None) -> MediaInput:
    """Frames sorted by name (one per second) + a wav (``--audio`` or the folder's only .wav)."""
    from stbava.data.io import load_audio, read_frame

    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise DataError(f"{folder}: no frame images (.png/.jpg) found")
    if wav is None:
        wavs = sorted(folder.glob("*.wav"))
        if len(wavs) != 1:
            raise DataError(f"{folder}: expected exactly one .wav beside the frames (found {len(wavs)}); pass --audio")
        wav = wavs[0]
    audio = load_audio(wav)
    seconds = min(len(frames), int(len(audio) // SR))
    if seconds < 1:
        raise DataError(f"{wav}: shorter than one second of audio")
    imgs = [read_frame(p) for p in frames[:seconds]]
    return MediaInput(np.stack([_squash(i) for i in imgs]), imgs, audio[: seconds * SR])


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


def run_predict(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, audio: str | Path | None = None,
                sam_checkpoint: str | None = None, vggish_checkpoint: str | None = None, device: str = "auto",
                video_name: str = "overlay.mp4") -> dict[str, Any]:
    """Segment ``input_path`` (video file or frames folder); write masks/, an overlay video and a summary."""
    import dataclasses

    from stbava.checkpoint import read_checkpoint
    from stbava.data.transforms import frames_to_sam_input
    from stbava.encoders.image import image_size
    from stbava.pipeline.distributed import resolve_device
    from stbava.pipeline.restore import restore_net
    from stbava.viz import save_mask_png, write_overlay_video

    src = Path(input_path)
    if not src.exists():
        raise DataError(f"input not found: {src}")
    media = read_frames_folder(src, Path(audio) if audio else None) if src.is_dir() else read_video(src)
    dev = resolve_device(device)
    payload = read_checkpoint(checkpoint)
    net, cfg = restore_net(payload, dev)
    enc_cfg = dataclasses.replace(cfg.encoder, **{k: v for k, v in (("sam_checkpoint", sam_checkpoint),
                                                                     ("vggish_checkpoint", vggish_checkpoint)) if v})
    image_enc, vggish = _stage_one_encoders(enc_cfg, cfg.frames, payload, dev)
    t = cfg.frames
    n = len(media.frames)
    probs = np.zeros((n, 224, 224), np.float32)
    with torch.inference_mode():
        for start, first_new in windows(n, t):
            frames, mels = _window_inputs(media, start, t)
            x = frames_to_sam_input(list(frames), image_size(cfg.encoder.name)).to(dev)
            if payload["kind"] == "fusion":
                aud = vggish(torch.from_numpy(mels).to(dev)).float()
                img = image_enc(x)
                logits = net.model(img[None], aud[None])[0]
            else:
                logits = net(x[None], torch.from_numpy(mels)[None].to(dev))[0]
            p = torch.sigmoid(logits.float()).cpu().numpy()
            for k in range(t):
                sec = start + k
                if first_new <= sec < n:
                    probs[sec] = p[k]
    out = Path(out)
    masks = (probs > 0.5).astype(np.uint8)
    for sec in range(n):
        save_mask_png(masks[sec], out / "masks" / f"{src.stem}_{sec + 1}.png")
    full_masks = [_upsize(masks[i], media.originals[i].shape[:2]) for i in range(n)]
    video = out / video_name
    write_overlay_video(_same_size(media.originals), np.stack(_same_size_masks(full_masks, media.originals)), video,
                        fps=1)
    summary = {"input": str(src), "seconds": n, "windows": len(windows(n, t)), "masks": str(out / "masks"),
               "overlay": str(video), "foreground_fraction": [float(m.mean()) for m in masks]}
    return summary


def _stage_one_encoders(enc_cfg, frames: int, payload: dict[str, Any], dev: torch.device):
    """The frozen encoders a stage-two model was trained with (checked by fingerprint); None for adapters."""
    if payload["kind"] != "fusion":
        return None, None
    from stbava.checkpoint import CheckpointFormatError
    from stbava.encoders.audio import build_vggish
    from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest
    from stbava.encoders.image import build_image_encoder

    want = payload.get("fingerprint")
    if want is not None and fingerprint_digest(encoder_fingerprint(enc_cfg, frames)) != fingerprint_digest(want):
        raise CheckpointFormatError(
            f"{payload['path']} was trained on embeddings of another encoder than these settings give; pass the "
            "--sam-checkpoint / --vggish-checkpoint used at extraction")
    image = build_image_encoder(enc_cfg.name, enc_cfg.sam_checkpoint, enc_cfg.seed).to(dev)
    return image, build_vggish(enc_cfg.vggish_checkpoint, enc_cfg.vggish_pca, enc_cfg.seed).to(dev)


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
