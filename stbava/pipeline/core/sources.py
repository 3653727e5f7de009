"""Where embeddings come from: the stage-one cache (stage two) or live encoders on raw frames (stage three).

A *source* is a dataset plus the embedder that turns its items into embeddings (lhotse's
PrecomputedFeatures / OnTheFlyFeatures idea). Both sources yield the same :class:`Batch`, whose fields are
named for what they hold; the training loop and evaluation pass ``batch.inputs()`` to the ``Net`` and never
know which source they use. A dataset item is one clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from stbava.data.clips import Clip, DataError

INPUT_FIELDS = ("image_embeddings", "audio_embeddings", "frames", "log_mels", "frame_valid")


@dataclass
class Batch:
    """A batch of B clips of T frames; each source fills its own two input fields, the others are None.

    Attributes:
        clip_ids: B clip ids.
        masks: ``[B,T,224,224]`` float {0,1}; frames without annotation are zeros. AVSS: int64 class indices.
        mask_valid: ``[B,T]`` bool, which frames are annotated (S4 train: frame 1 only; never a padded frame).
        image_embeddings: ``[B,T,256,g,g]`` cached SAM embeddings (float16) — :class:`CachedSource`.
        audio_embeddings: ``[B,T,128]`` cached VGGish vectors — :class:`CachedSource`.
        frames: ``[B,T,3,S,S]`` frames resized for the encoder, 0..255 — :class:`LiveSource`.
        log_mels: ``[B,T,1,96,64]`` VGGish log-mel examples — :class:`LiveSource`.
        frame_valid: ``[B,T]`` bool, which frames exist (AVSS: 5-frame clips padded to 10); None = all.
            ``Net`` zeroes the embeddings of the others, so what a padded frame holds never matters.
    """

    clip_ids: list[str]
    masks: torch.Tensor
    mask_valid: torch.Tensor
    image_embeddings: torch.Tensor | None = None
    audio_embeddings: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    log_mels: torch.Tensor | None = None
    frame_valid: torch.Tensor | None = None

    def inputs(self) -> dict[str, torch.Tensor]:
        """The filled input fields by name: the keyword arguments of ``Net.forward``."""
        return {k: getattr(self, k) for k in INPUT_FIELDS if getattr(self, k) is not None}

    def to(self, device: torch.device) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return Batch(**moved)


def encoder_frames(name: str, frames: Sequence[np.ndarray]) -> torch.Tensor:
    """Decoded RGB frames -> what image encoder ``name`` takes, in one place for extraction, stage three and predict.

    SAM: ResizeLongestSide to its input side (``[N,3,h',w']``, padded by the encoder). SAM 2: the frames as they
    are (``[N,3,H,W]``, 0..255), which its encoder resizes to its square input itself, as SAM2Transforms does.
    """
    from stbava.data.transforms import frames_to_sam_input, frames_to_tensor
    from stbava.encoders import hiera
    from stbava.encoders.image import image_size

    return frames_to_tensor(frames) if hiera.is_sam2(name) else frames_to_sam_input(frames, image_size(name))


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack clip items (dicts with ``clip_id``, ``masks``, ``mask_valid`` and input fields) into a Batch."""
    keys = [k for k in ("masks", "mask_valid", *INPUT_FIELDS) if k in items[0]]
    stacked = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in keys}
    return Batch(clip_ids=[it["clip_id"] for it in items], **stacked)


def load_masks(clip: Clip, frames: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """GT masks ``[T,size,size]`` and a ``[T]`` bool validity vector for one clip.

    S4 / MS3: float32 {0,1} masks. AVSS: int64 class maps from the colour labels (any palette colour; the
    dataset's class count is checked by ``check-data`` and the metric).
    """
    from stbava.data.io import read_mask

    semantic = clip.subset == "avss"
    if semantic:
        from stbava.data.avss_labels import read_colour_label
    masks = np.zeros((frames, size, size), np.int64 if semantic else np.float32)
    valid = np.zeros(frames, bool)
    for k, path in zip(clip.mask_frames, clip.mask_paths):
        if k < frames:
            masks[k] = read_colour_label(path, size=size) if semantic else read_mask(path, size=size)
            valid[k] = True
    return masks, valid


def frame_valid(clip: Clip, frames: int) -> torch.Tensor:
    """``[T]`` bool: the clip's own frames (AVSS v1s / v1m: 5 of the 10 cached), False for padding."""
    return torch.arange(frames) < clip.num_frames


def shuffled_partner(ids: Sequence[Any]) -> list[Any]:
    """A deterministic derangement (each clip gets the next clip's audio) for the shuffled-audio control."""
    n = len(ids)
    return [ids[(i + 1) % n] for i in range(n)] if n > 1 else list(ids)


class CachedClips(Dataset):
    """Stage two: clip -> cached image/audio embeddings + GT masks. Imports no encoder."""

    def __init__(self, cache_path: str | Path, clips: Sequence[Clip], frames: int,
                 audio_from: Sequence[str] | None = None) -> None:
        """``audio_from``: optional clip ids whose audio replaces each clip's own (shuffled-audio control)."""
        from stbava.cache import open_cache

        self.cache_path = str(cache_path)
        self._reader = open_cache(cache_path)
        done = {cid for split in self._reader.splits() for cid in self._reader.clip_ids(split)}
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
        item = {"clip_id": clip.id, "image_embeddings": torch.from_numpy(np.ascontiguousarray(image)),
                "audio_embeddings": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                "masks": torch.from_numpy(masks), "mask_valid": torch.from_numpy(valid)}
        if clip.subset == "avss":
            item["frame_valid"] = frame_valid(clip, self.frames)
            if np.any(image[clip.num_frames:]):  # extraction stores zero frames after a clip's own
                raise DataError(f"cache {self.cache_path}: clip {clip.id} has {clip.num_frames} frames in the "
                                f"metadata but more in the cache; rebuild the cache from this data")
        return item


class RawClips(Dataset):
    """Stage three / eval of adapters: clip -> resized frames (0..255, unpadded) + log-mel examples + GT masks."""

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
        return {"clip_id": clip.id, "frames": frames, "log_mels": torch.from_numpy(mels),
                "masks": torch.from_numpy(masks), "mask_valid": torch.from_numpy(valid)}


class CachedEmbedder(nn.Module):
    """Stage two: the batch already holds the embeddings; pass them through."""

    def forward(self, image_embeddings: torch.Tensor,
                audio_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_embeddings, audio_embeddings


class LiveEmbedder(nn.Module):
    """Frames ``[B,T,3,S,S]`` (0..255) + log-mels ``[B,T,1,96,64]`` -> embeddings, by the encoders themselves.

    VGGish stays frozen (``embed_audio``: no grad, PCA exactly when loaded). In stage three the image encoder
    carries the audio adapters, which need the frame's VGGish vector, so embeddings depend on audio and cannot
    be cached; ``predict`` of a stage-two model runs the plain frozen encoder (``audio_adapters=False``).
    """

    def __init__(self, image_encoder: nn.Module, vggish: nn.Module, grad_checkpointing: bool = False,
                 audio_adapters: bool = True) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.vggish = vggish
        self.grad_checkpointing = grad_checkpointing
        self.audio_adapters = audio_adapters

    def forward(self, frames: torch.Tensor, log_mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from stbava.encoders.audio import embed_audio

        b, t = frames.shape[:2]
        emb = embed_audio(self.vggish, log_mels.flatten(0, 1).float()).float()  # [B*T,128]
        x = frames.flatten(0, 1)
        if self.audio_adapters:
            feats = self.image_encoder(x, emb, checkpoint=self.grad_checkpointing and self.training)
        else:
            feats = self.image_encoder(x)
        return feats.unflatten(0, (b, t)), emb.unflatten(0, (b, t))


@dataclass
class CachedSource:
    """Stage two's source: clips read from a stage-one cache, embeddings passed through."""

    cache: str | Path
    frames: int

    def dataset(self, clips: Sequence[Clip], shuffle_audio: bool = False) -> CachedClips:
        partners = shuffled_partner([c.id for c in clips]) if shuffle_audio else None
        return CachedClips(self.cache, clips, self.frames, audio_from=partners)

    def embedder(self) -> nn.Module:
        return CachedEmbedder()


@dataclass
class LiveSource:
    """Stage three's source: raw frames and wavs, embedded by the (adapted) image encoder and VGGish."""

    img_size: int
    frames: int

    def dataset(self, clips: Sequence[Clip], shuffle_audio: bool = False) -> RawClips:
        partners = shuffled_partner(clips) if shuffle_audio else None
        return RawClips(clips, self.frames, self.img_size, audio_from=partners)

    @staticmethod
    def embedder(image_encoder: nn.Module, vggish: nn.Module, grad_checkpointing: bool = False) -> nn.Module:
        return LiveEmbedder(image_encoder, vggish, grad_checkpointing)
