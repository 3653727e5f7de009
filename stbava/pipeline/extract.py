"""Stage one: AVSBench clips -> frozen SAM image encoder + VGGish -> feature cache.

Shaped like lhotse's batch extractor: done clips are skipped (so a killed run resumes), DataLoader workers
decode PNGs and wavs while the encoders run under ``inference_mode``, and one background thread writes
clips in CSV order, each clip's done flag only after its arrays. The progress bar starts at the done count.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from stbava import __version__
from stbava.cache import CacheWriter, create_cache
from stbava.config import ConfigError, EncoderConfig
from stbava.data.clips import Clip, DataError, load_clips
from stbava.data.io import load_audio, read_frame
from stbava.data.transforms import frames_to_sam_input, waveform_to_examples
from stbava.encoders.audio import build_vggish, embed_audio
from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest
from stbava.encoders.image import build_image_encoder, grid_size, image_size

log = logging.getLogger(__name__)

_MAX_PENDING_WRITES = 2  # batches waiting for the writer thread; bounds memory, keeps the GPU busy


@dataclass(frozen=True)
class ExtractSummary:
    """What one ``run_extraction`` call did."""

    cache: str
    backend: str
    total: int  # clips requested (all selected splits)
    written: int  # clips encoded and stored by this run
    skipped: int  # clips already done before this run
    seconds: float
    device: str
    fingerprint: str  # fingerprint_digest of the encoders

    @property
    def clips_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


class ClipInputs(Dataset):
    """clip -> SAM-resized frames ``[T,3,h,w]`` (0..255) and VGGish examples ``[T,1,96,64]``.

    A bad input file is returned as an ``error`` entry instead of raised, so the main process can raise a
    clean DataError naming the file (an exception raised inside a worker arrives wrapped in a traceback).
    """

    def __init__(self, clips: Sequence[Clip], img_size: int, frames: int) -> None:
        self.clips, self.img_size, self.frames = list(clips), img_size, frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip = self.clips[i]
        try:
            images = frames_to_sam_input([read_frame(p) for p in clip.frame_paths[: self.frames]], self.img_size)
            mels = waveform_to_examples(load_audio(clip.wav_path), num_examples=self.frames)
        except DataError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "frames": images, "mels": torch.from_numpy(mels)}


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items  # clips may differ in frame size; batching happens in encode_batch


def resolve_extract_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


def encode_batch(image_encoder: nn.Module, vggish: nn.Module, items: Sequence[dict[str, Any]],
                 device: torch.device, amp: str = "off") -> list[tuple[np.ndarray, np.ndarray]]:
    """Encode several clips in one forward per encoder (B*T frames) when their frame sizes agree.

    Args:
        image_encoder: a FrozenImageEncoder on ``device``.
        vggish: from build_vggish, on ``device``.
        items: ClipInputs entries (``frames`` [T,3,h,w], ``mels`` [T,1,96,64]).
        device: where the encoders live.
        amp: ``bf16`` runs the image encoder under CUDA bf16 autocast; ``off`` keeps float32.

    Returns:
        Per clip ``(image float16 [T,256,g,g], audio float32 [T,128])``.
    """
    counts = [it["frames"].shape[0] for it in items]
    same = len({tuple(it["frames"].shape[1:]) for it in items}) == 1
    groups = [torch.cat([it["frames"] for it in items])] if same else [it["frames"] for it in items]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16" and device.type == "cuda")
    with torch.inference_mode():
        with autocast:
            images = [image_encoder(g.to(device, non_blocking=True)).to(torch.float16) for g in groups]
        mels = torch.cat([it["mels"] for it in items]).to(device)
        audio = embed_audio(vggish, mels).float().cpu().numpy()
    image = torch.cat(images).cpu().numpy()
    out, start = [], 0
    for n in counts:
        out.append((image[start:start + n], audio[start:start + n]))
        start += n
    return out


def _write_batch(writer: CacheWriter, ids: list[str], encoded: list[tuple[np.ndarray, np.ndarray]],
                 mels: list[np.ndarray | None]) -> None:
    for cid, (img, aud), mel in zip(ids, encoded, mels):
        writer.write_clip(cid, img, aud, mel)


def run_extraction(data_root: str | Path, subset: str, cache_path: str | Path, backend: str = "zarr",
                   enc_cfg: EncoderConfig | None = None, splits: Sequence[str] | None = None,
                   batch_size: int = 4, device: str = "auto", amp: str = "off", frames: int = 5,
                   store_log_mel: bool = False, progress: bool = True, num_workers: int = 0,
                   codec: str | None = None) -> ExtractSummary:
    """Encode every clip of the selected splits into the cache at ``cache_path`` (resuming a previous run).

    Args:
        data_root: AVSBench subset folder (or its parent).
        subset: ``s4`` | ``ms3``.
        cache_path: store to create or resume (``.zarr`` directory / ``.h5`` file).
        backend: ``zarr`` | ``hdf5``; must match an existing store.
        enc_cfg: encoder name, checkpoints, seed (defaults: tiny random encoders).
        splits: subset of train/val/test; all when None.
        batch_size: clips per encoder forward (batch_size * frames images).
        device: ``auto`` (CUDA when present) | ``cpu`` | ``cuda``.
        amp: ``off`` | ``bf16`` (CUDA only; ignored with a warning on CPU).
        frames: T, frames per clip.
        store_log_mel: also cache the VGGish input examples.
        progress: show a tqdm bar (clips/s).
        num_workers: DataLoader workers decoding inputs while the encoders run.
        codec: backend codec for a new store (backend default when None).

    Raises:
        DataError: unreadable input (names the file); CacheError: foreign/locked cache;
        CheckpointError: bad checkpoint; ConfigError: bad device/amp.
    """
    enc_cfg = enc_cfg or EncoderConfig()
    if amp not in ("off", "bf16"):
        raise ConfigError(f"--amp must be off or bf16, got {amp!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    dev = resolve_extract_device(device)
    if amp == "bf16" and dev.type != "cuda":
        log.warning("--amp bf16 needs CUDA (bf16 autocast is much slower on CPUs); extracting in float32")
        amp = "off"
    clips = load_clips(data_root, subset, splits, frames=frames)
    if not clips:
        raise DataError(f"no clips of subset {subset} (splits {', '.join(splits or ['all'])}) under {data_root}")
    fp = encoder_fingerprint(enc_cfg, frames)
    g = grid_size(enc_cfg.name)
    info = {"amp": amp, "device": dev.type, "stbava": __version__, "subset": subset}
    start = time.perf_counter()
    with create_cache(cache_path, backend, fingerprint=fp, clips=[(c.id, c.split) for c in clips], frames=frames,
                      emb_shape=(256, g, g), store_log_mel=store_log_mel, codec=codec, info=info) as writer:
        todo = [c for c in clips if not writer.is_done(c.id)]
        skipped = len(clips) - len(todo)
        log.info("extract %s -> %s: %d clips, %d already done, device %s, amp %s",
                 subset, cache_path, len(clips), skipped, dev, amp)
        if todo:
            _extract(writer, todo, enc_cfg, dev, amp, batch_size, frames, store_log_mel, num_workers,
                     tqdm(total=len(clips), initial=skipped, unit="clip", desc="extract", disable=not progress))
    return ExtractSummary(cache=str(cache_path), backend=writer.backend, total=len(clips), written=len(todo),
                          skipped=skipped, seconds=time.perf_counter() - start, device=str(dev),
                          fingerprint=fingerprint_digest(fp))


def _extract(writer: CacheWriter, todo: list[Clip], enc_cfg: EncoderConfig, dev: torch.device, amp: str,
             batch_size: int, frames: int, store_log_mel: bool, num_workers: int, bar: tqdm) -> None:
    image_encoder = build_image_encoder(enc_cfg.name, enc_cfg.sam_checkpoint, seed=enc_cfg.seed).to(dev)
    vggish = build_vggish(enc_cfg.vggish_checkpoint, enc_cfg.vggish_pca, seed=enc_cfg.seed).to(dev)
    loader = DataLoader(ClipInputs(todo, image_size(enc_cfg.name), frames), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_list, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    pending: deque[tuple[Future[None], int]] = deque()
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer") as pool:
        try:
            for items in loader:
                for it in items:
                    if "error" in it:
                        raise DataError(f"clip {todo[it['index']].id}: {it['error']}")
                encoded = encode_batch(image_encoder, vggish, items, dev, amp)
                ids = [todo[it["index"]].id for it in items]
                mels = [it["mels"].numpy() if store_log_mel else None for it in items]
                pending.append((pool.submit(_write_batch, writer, ids, encoded, mels), len(ids)))
                while len(pending) > _MAX_PENDING_WRITES or (pending and pending[0][0].done()):
                    fut, n = pending.popleft()
                    fut.result()  # re-raises a write error here, in order
                    bar.update(n)
        finally:
            while pending:  # let already-encoded clips land (each one whole) before leaving
                fut, n = pending.popleft()
                fut.result()
                bar.update(n)
