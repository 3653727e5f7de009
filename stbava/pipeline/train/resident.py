"""The whole training split held on the device once: batches by indexing, no host data loader."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from stbava.config import ConfigError
from stbava.data.clips import DataError
from stbava.pipeline.core.sources import INPUT_FIELDS, Batch


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
            ds: a map-style dataset of clip dicts (``clip_id``, ``masks``, ``mask_valid`` and the input fields
                of :class:`~stbava.pipeline.core.sources.Batch`, e.g. ``image_embeddings``, ``audio_embeddings``).
            device: where the tensors live (a CUDA device for ``train.gpu_resident``; CPU works too).
            num_workers: DataLoader workers that read ``ds`` while it is copied (once).
            headroom: refuse when the data would take more than this share of the device's free memory.

        Raises:
            ConfigError: the data does not fit (names the size and the setting to turn off).
        """
        self.device = torch.device(device)
        n = len(ds)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("gpu_resident: the dataset is empty")
        first = ds[0]
        self.input_keys = [k for k in INPUT_FIELDS if k in first]
        shapes = {k: torch.as_tensor(first[k]) for k in (*self.input_keys, "masks", "mask_valid")}
        per_clip = sum(t.numel() * t.element_size() for t in shapes.values()) - shapes["masks"].numel() * (
            shapes["masks"].element_size() - 1)
        self.nbytes = n * per_clip
        self._check_fits(headroom)
        self.clip_ids: list[str] = []
        self.inputs = {k: torch.empty((n, *shapes[k].shape), dtype=shapes[k].dtype, device=self.device)
                       for k in self.input_keys}
        self.masks = torch.empty((n, *shapes["masks"].shape), dtype=torch.bool, device=self.device)
        self.mask_valid = torch.empty((n, *shapes["mask_valid"].shape), dtype=torch.bool, device=self.device)
        self._mask_dtype = shapes["masks"].dtype
        loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers)
        for i, item in enumerate(loader):
            self.clip_ids.append(item["clip_id"])
            for k in self.input_keys:
                self.inputs[k][i].copy_(torch.as_tensor(item[k]), non_blocking=True)
            masks = torch.as_tensor(item["masks"])
            if not bool(((masks == 0) | (masks == 1)).all()):
                self._store_float_masks(masks.dtype)
            self.masks[i].copy_(masks, non_blocking=True)
            self.mask_valid[i].copy_(torch.as_tensor(item["mask_valid"]), non_blocking=True)

    def _check_fits(self, headroom: float) -> None:
        gib = self.nbytes / 2**30
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            where = f"GPU {self.device} ({free / 2**30:.1f} GiB free)"
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = f"host memory ({free / 2**30:.1f} GiB free)"
        if self.nbytes > headroom * free:
            raise ConfigError(f"train.gpu_resident: the training clips take {gib:.1f} GiB, more than "
                              f"{headroom:.0%} of {where}; set train.gpu_resident: false to stream them from the cache")

    def _store_float_masks(self, dtype: torch.dtype) -> None:
        if self.masks.dtype == torch.bool:  # soft masks: keep them as they are (once, for the whole set)
            self.masks = self.masks.to(dtype if dtype.is_floating_point else torch.float32)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"clip_id": self.clip_ids[i], **{k: v[i] for k, v in self.inputs.items()},
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
        return Batch(clip_ids=[self.clip_ids[i] for i in idx],
                     masks=self.masks.index_select(0, sel).to(self._out_mask_dtype), mask_valid=valid,
                     **{k: v.index_select(0, sel) for k, v in self.inputs.items()})

    def batches(self, batches: Sequence[Sequence[int]]) -> Iterator[Batch]:
        """The loader replacement: one :class:`Batch` per index list, in order."""
        for b in batches:
            yield self.batch(b)
