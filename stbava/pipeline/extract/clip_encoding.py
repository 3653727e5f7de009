"""What stage one computes per clip: its decoded inputs (a DataLoader dataset) and its frozen-encoder features.

Kept apart from the extraction job (:mod:`stbava.pipeline.extract.features`: resume, writing, torchrun shards) because
this is the numerics every cached clip goes through: one clip's features must not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from stbava.data.clips import Clip, DataError
from stbava.data.io import load_audio, read_clip_frames
from stbava.data.transforms import waveform_to_examples
from stbava.device import autocast
from stbava.encoders.audio import embed_audio
from stbava.pipeline.core.sources import encoder_frames


class ClipInputs(Dataset):
    """clip -> frames for encoder ``encoder`` ``[T,3,h,w]`` (0..255) and VGGish examples ``[T,1,96,64]``.

    A bad input file is returned as an ``error`` entry instead of raised, so the main process can raise a
    clean DataError naming the file (an exception raised inside a worker arrives wrapped in a traceback).
    """

    def __init__(self, clips: Sequence[Clip], encoder: str, frames: int) -> None:
        self.clips, self.encoder, self.frames = list(clips), encoder, frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        n = min(self.frames, clip.num_frames)  # AVSS v1 clips: 5 of the cache's 10 (padded when written)
        try:
            images = encoder_frames(self.encoder, read_clip_frames(clip.frame_paths[:n]))
            mels = waveform_to_examples(load_audio(clip.wav_path), num_examples=n)
        except DataError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "frames": images, "mels": torch.from_numpy(mels)}


def as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader ``collate_fn``: keep the batch a list, since clips may differ in frame size (encode_batch
    groups same-sized frames itself)."""
    return items


def encode_batch(image_encoder: nn.Module, vggish: nn.Module, items: Sequence[dict[str, Any]],
                 device: torch.device, amp: str = "off", frames_per_forward: int = 0
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Encode several clips, their frames through the image encoder ``frames_per_forward`` at a time.

    Args:
        image_encoder: a FrozenImageEncoder on ``device``.
        vggish: from build_vggish, on ``device``.
        items: ClipInputs entries (``frames`` [T,3,h,w], ``mels`` [T,1,96,64]).
        device: where the encoders live.
        amp: ``bf16`` runs the image encoder under bf16 autocast; ``off`` keeps float32.
        frames_per_forward: frames per image-encoder forward (0 = all B*T frames of same-sized clips at once).
            What bounds extraction's memory: the activations of one forward, whatever the batch size.

    Returns:
        Per clip ``(image float16 [T,256,g,g], audio float32 [T,128])`` (SAM 2 with high-res levels:
        ``[T,1024,g,g]``, packed).
    """
    counts = [it["frames"].shape[0] for it in items]
    same = len({tuple(it["frames"].shape[1:]) for it in items}) == 1
    groups = [torch.cat([it["frames"] for it in items])] if same else [it["frames"] for it in items]
    if frames_per_forward > 0:
        groups = [chunk for g in groups for chunk in torch.split(g, frames_per_forward)]
    with torch.inference_mode():
        with autocast(device, amp):  # bf16 on CPU too: the caller checked it is native there (check_amp)
            images = [image_encoder(g.to(device, non_blocking=True)).to(torch.float16) for g in groups]
        # one VGGish call per clip ([T,1,96,64] every time): batched convolutions pick other kernels for other
        # batch sizes, and a clip's embedding must not depend on its batch-mates, or a resumed cache would differ
        audio = np.concatenate([embed_audio(vggish, it["mels"].to(device)).float().cpu().numpy() for it in items])
    image = torch.cat(images).cpu().numpy()
    out, start = [], 0
    for n in counts:
        out.append((image[start:start + n], audio[start:start + n]))
        start += n
    return out


def pad_frames(arr: np.ndarray, frames: int) -> np.ndarray:
    """``[n, ...]`` -> ``[frames, ...]`` with zero frames appended (AVSS clips shorter than the cache's T)."""
    if arr.shape[0] >= frames:
        return arr
    return np.concatenate([arr, np.zeros((frames - arr.shape[0], *arr.shape[1:]), arr.dtype)])
