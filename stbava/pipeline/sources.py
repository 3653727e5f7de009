"""Where embeddings come from: the stage-one cache (stage two) or live encoders on raw frames (stage three).

Both sources yield the same ``Batch``; the training loop and evaluation never know which one they use
(lhotse's PrecomputedFeatures / OnTheFlyFeatures idea). A dataset item is one clip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        from stbava.data.io import load_audio, read_clip_frames
        from stbava.data.transforms import frames_to_sam_input, waveform_to_examples

        clip = self.clips[i]
        frames = frames_to_sam_input(read_clip_frames(clip.frame_paths[: self.frames]), self.img_size)
        audio_clip = self.audio_from[i] if self.audio_from is not None else clip
        mels = waveform_to_examples(load_audio(audio_clip.wav_path), num_examples=self.frames)
        masks, valid = load_masks(clip, self.frames)
        return {"clip_id": clip.id, "image": frames, "audio": torch.from_numpy(mels),
                "masks": torch.from_numpy(masks), "mask_valid": torch.from_numpy(valid)}


def shuffled_partner(ids: Sequence[Any]) -> list[Any]:
    """A deterministic derangement (each clip gets the next clip's audio) for the shuffled-audio control."""
    n = len(ids)
    return [ids[(i + 1) % n] for i in range(n)] if n > 1 else list(ids)


class ResidentClips(Dataset):
    """Every clip of a dataset held in (GPU) memory once: batches by indexing, no host data loader.

    Stage two reads the same few GB of embeddings every epoch; when they fit on the device, copying them
    there once removes the per-step decode, collate and host-to-device copy. Items are exactly the wrapped
    dataset's (``ds[i]``), so batches, and so losses, equal those of a DataLoader over ``ds``. Binary masks
    are kept as bool (4x smaller) and returned as float32 {0,1}.
    """

    def __init__(self, ds: Dataset, device: torch.device | str, num_workers: int = 0,
                 headroom: float = 0.75) -> None:
        """Load ``ds`` onto ``device``.

        Args:
            ds: a map-style dataset of clip dicts (``clip_id``, ``image``, ``audio``, ``masks``, ``mask_valid``).
            device: where the tensors live (a CUDA device for ``train.gpu_resident``; CPU works too).
            num_workers: DataLoader workers that read ``ds`` while it is copied (once).
            headroom: refuse when the data would take more than this share of the device's free memory.

        Raises:
            ConfigError: the data does not fit (names the size and the setting to turn off).
        """
        from torch.utils.data import DataLoader

        self.device = torch.device(device)
        n = len(ds)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("gpu_resident: the dataset is empty")
        first = ds[0]
        shapes = {k: torch.as_tensor(first[k]) for k in ("image", "audio", "masks", "mask_valid")}
        per_clip = sum(t.numel() * t.element_size() for t in shapes.values()) - shapes["masks"].numel() * (
            shapes["masks"].element_size() - 1)
        self.nbytes = n * per_clip
        self._check_fits(headroom)
        self.clip_ids: list[str] = []
        self.image = torch.empty((n, *shapes["image"].shape), dtype=shapes["image"].dtype, device=self.device)
        self.audio = torch.empty((n, *shapes["audio"].shape), dtype=shapes["audio"].dtype, device=self.device)
        self.masks = torch.empty((n, *shapes["masks"].shape), dtype=torch.bool, device=self.device)
        self.mask_valid = torch.empty((n, *shapes["mask_valid"].shape), dtype=torch.bool, device=self.device)
        self._mask_dtype = shapes["masks"].dtype
        loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers)
        for i, item in enumerate(loader):
            self.clip_ids.append(item["clip_id"])
            self.image[i].copy_(torch.as_tensor(item["image"]), non_blocking=True)
            self.audio[i].copy_(torch.as_tensor(item["audio"]), non_blocking=True)
            masks = torch.as_tensor(item["masks"])
            if not bool(((masks == 0) | (masks == 1)).all()):
                self._store_float_masks(masks.dtype)
            self.masks[i].copy_(masks, non_blocking=True)
            self.mask_valid[i].copy_(torch.as_tensor(item["mask_valid"]), non_blocking=True)

    def _check_fits(self, headroom: float) -> None:
        import os

        gib = self.nbytes / 2**30
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            where = f"GPU {self.device} ({free / 2**30:.1f} GiB free)"
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = f"host memory ({free / 2**30:.1f} GiB free)"
        if self.nbytes > headroom * free:
            from stbava.config import ConfigError

            raise ConfigError(f"train.gpu_resident: the training clips take {gib:.1f} GiB, more than "
                              f"{headroom:.0%} of {where}; set train.gpu_resident: false to stream them from the cache")

    def _store_float_masks(self, dtype: torch.dtype) -> None:
        if self.masks.dtype == torch.bool:  # soft masks: keep them as they are (once, for the whole set)
            self.masks = self.masks.to(dtype if dtype.is_floating_point else torch.float32)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"clip_id": self.clip_ids[i], "image": self.image[i], "audio": self.audio[i],
                "masks": self.masks[i].to(self._out_mask_dtype), "mask_valid": self.mask_valid[i]}

    @property
    def _out_mask_dtype(self) -> torch.dtype:
        return self._mask_dtype if self._mask_dtype.is_floating_point else torch.float32

    def batch(self, indices: Sequence[int]) -> Batch:
        """One batch on the device; index ``-1 - i`` is clip ``i`` with no annotated frame (DDP padding)."""
        idx = [i if i >= 0 else -1 - i for i in indices]
        sel = torch.tensor(idx, device=self.device)
        valid = self.mask_valid.index_select(0, sel)
        pad = [k for k, i in enumerate(indices) if i < 0]
        if pad:
            valid[pad] = False
        return Batch(clip_ids=[self.clip_ids[i] for i in idx], image=self.image.index_select(0, sel),
                     audio=self.audio.index_select(0, sel),
                     masks=self.masks.index_select(0, sel).to(self._out_mask_dtype), mask_valid=valid)

    def batches(self, batches: Sequence[Sequence[int]]) -> Iterator[Batch]:
        """The loader replacement: one :class:`Batch` per index list, in order."""
        for b in batches:
            yield self.batch(b)
