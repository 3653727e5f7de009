"""Where embeddings come from: the stage-one cache (stage two) or live encoders on raw frames (stage three).

Both sources yield the same ``Batch``; the training loop and evaluation never know which one they use
(lhotse's PrecomputedFeatures / OnTheFlyFeatures idea). A dataset item is one clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from stbava.data.clips import Clip, DataError


@dataclass
class Batch:
    """A batch of B clips of T frames.

    Attributes:
        clip_ids: B clip ids.
        audio: [B,T,128] VGGish embeddings (stage two) or [B,T,1,96,64] log-mel examples (stage three).
        image: [B,T,256,h,w] cached image embeddings (stage two) or [B,T,3,S,S] frames on the 0..255 scale.
        masks: [B,T,224,224] float {0,1}; frames without annotation are zeros.
        mask_valid: [B,T] bool, which frames are annotated (S4 train: frame 1 only).
    """

    clip_ids: list[str]
    image: torch.Tensor
    audio: torch.Tensor
    masks: torch.Tensor
    mask_valid: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.clip_ids, self.image.to(device, non_blocking=True),
                     self.audio.to(device, non_blocking=True), self.masks.to(device, non_blocking=True),
                     self.mask_valid.to(device, non_blocking=True))


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    return Batch(
        clip_ids=[it["clip_id"] for it in items],
        image=torch.stack([torch.as_tensor(it["image"]) for it in items]),
        audio=torch.stack([torch.as_tensor(it["audio"]) for it in items]),
        masks=torch.stack([torch.as_tensor(it["masks"]) for it in items]),
        mask_valid=torch.stack([torch.as_tensor(it["mask_valid"]) for it in items]),
    )


def load_masks(clip: Clip, frames: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """GT masks ``[T,size,size]`` float32 and a ``[T]`` bool validity vector for one clip."""
    from stbava.data.io import read_mask

    masks = np.zeros((frames, size, size), np.float32)
    valid = np.zeros(frames, bool)
    for k, path in zip(clip.mask_frames, clip.mask_paths):
        if k < frames:
            masks[k] = read_mask(path, size=size)
            valid[k] = True
    return masks, valid


class CachedClips(Dataset):
    """Stage two: clip -> cached image/audio embeddings + GT masks. Imports no encoder."""

    def __init__(self, cache_path: str | Path, clips: Sequence[Clip], frames: int,
                 audio_from: Sequence[str] | None = None) -> None:
        """``audio_from``: optional clip ids whose audio replaces each clip's own (shuffled-audio control)."""
        from stbava.cache import open_cache

        self.cache_path = str(cache_path)
        self._reader = open_cache(cache_path)
        done = set()
        for split in self._reader.splits():
            done.update(self._reader.clip_ids(split))
        missing = [c.id for c in clips if c.id not in done]
        if missing:
            raise DataError(
                f"{len(missing)} clip(s) of the requested split are not in cache {cache_path} "
                f"(e.g. {', '.join(missing[:3])}); finish extraction with `stbava extract-features` (it resumes)"
            )
        self.clips = list(clips)
        self.frames = frames
        self.audio_from = list(audio_from) if audio_from is not None else None

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._reader.fingerprint

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        image = self._reader.image_embeddings(clip.id)
        audio_id = self.audio_from[i] if self.audio_from is not None else clip.id
        audio = self._reader.audio_embeddings(audio_id)
        if image.shape[0] != self.frames:
            raise DataError(f"cache {self.cache_path}: clip {clip.id} has {image.shape[0]} frames, "
                            f"config expects {self.frames}")
        masks, valid = load_masks(clip, self.frames)
        return {"clip_id": clip.id, "image": torch.from_numpy(np.ascontiguousarray(image)),
                "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                "masks": torch.from_numpy(masks), "mask_valid": torch.from_numpy(valid)}


class RawClips(Dataset):
    """Stage three / predict: clip -> resized frames (0..255, unpadded) + log-mel examples + GT masks."""

    def __init__(self, clips: Sequence[Clip], frames: int, img_size: int,
                 audio_from: Sequence[Clip] | None = None) -> None:
        self.clips = list(clips)
        self.frames = frames
        self.img_size = img_size
        self.audio_from = list(audio_from) if audio_from is not None else None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from stbava.data.io import load_audio, read_frame
        from stbava.data.transforms import frames_to_sam_input, waveform_to_examples

        clip = self.clips[i]
        frames = frames_to_sam_input([read_frame(p) for p in clip.frame_paths[: self.frames]], self.img_size)
        audio_clip = self.audio_from[i] if self.audio_from is not None else clip
        mels = waveform_to_examples(load_audio(audio_clip.wav_path), num_examples=self.frames)
        masks, valid = load_masks(clip, self.frames)
        return {"clip_id": clip.id, "image": frames, "audio": torch.from_numpy(mels),
                "masks": torch.from_numpy(masks), "mask_valid": torch.from_numpy(valid)}


def shuffled_partner(ids: Sequence[Any]) -> list[Any]:
    """A deterministic derangement (each clip gets the next clip's audio) for the shuffled-audio control."""
    n = len(ids)
    return [ids[(i + 1) % n] for i in range(n)] if n > 1 else list(ids)
