"""Stage one: AVSBench clips -> frozen SAM image encoder + VGGish -> feature cache.

Shaped like lhotse's batch extractor: done clips are skipped (so a killed run resumes), DataLoader workers
decode PNGs and wavs while the encoders run under ``inference_mode``, and one background thread writes
clips in CSV order, each clip's done flag only after its arrays. The progress bar starts at the done count.

Under ``torchrun`` (WORLD_SIZE > 1) rank 0 creates or resumes the store, then tells every rank the job's
lock token and the clips still to do; rank r encodes every world-th of them (``todo[r::world]``) on its own
GPU and writes them into the same cache (:mod:`stbava.cache.shards`). The result equals a one-process run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from stbava.cache import CacheError, CacheWriter, create_cache, join_cache, merge_parts
from stbava.config import ConfigError, EncoderConfig
from stbava.data.clips import Clip, DataError, load_clips
from stbava.data.io import load_audio, read_clip_frames
from stbava.data.transforms import frames_to_sam_input, waveform_to_examples
from stbava.device import autocast, resolve_device
from stbava.encoders.audio import embed_audio
from stbava.encoders.build import auto_frames_per_forward, build_frozen_encoders
from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest
from stbava.encoders.image import grid_size, image_size
from stbava.encoders.weights import record_paths
from stbava.pipeline.distributed import DistInfo, dist_info
from stbava.version import __version__

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
            images = frames_to_sam_input(read_clip_frames(clip.frame_paths[: self.frames]), self.img_size)
            mels = waveform_to_examples(load_audio(clip.wav_path), num_examples=self.frames)
        except DataError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "frames": images, "mels": torch.from_numpy(mels)}


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items  # clips may differ in frame size; batching happens in encode_batch


def encode_batch(image_encoder: nn.Module, vggish: nn.Module, items: Sequence[dict[str, Any]],
                 device: torch.device, amp: str = "off", frames_per_forward: int = 0
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Encode several clips, their frames through the image encoder ``frames_per_forward`` at a time.

    Args:
        image_encoder: a FrozenImageEncoder on ``device``.
        vggish: from build_vggish, on ``device``.
        items: ClipInputs entries (``frames`` [T,3,h,w], ``mels`` [T,1,96,64]).
        device: where the encoders live.
        amp: ``bf16`` runs the image encoder under CUDA bf16 autocast; ``off`` keeps float32.
        frames_per_forward: frames per image-encoder forward (0 = all B*T frames of same-sized clips at once).
            What bounds extraction's memory: the activations of one forward, whatever the batch size.

    Returns:
        Per clip ``(image float16 [T,256,g,g], audio float32 [T,128])``.
    """
    counts = [it["frames"].shape[0] for it in items]
    same = len({tuple(it["frames"].shape[1:]) for it in items}) == 1
    groups = [torch.cat([it["frames"] for it in items])] if same else [it["frames"] for it in items]
    if frames_per_forward > 0:
        groups = [chunk for g in groups for chunk in torch.split(g, frames_per_forward)]
    with torch.inference_mode():
        with autocast(device, amp if device.type == "cuda" else "off"):  # bf16 on CUDA only
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


def _write_batch(writer: CacheWriter, ids: list[str], encoded: list[tuple[np.ndarray, np.ndarray]],
                 mels: list[np.ndarray | None]) -> None:
    for cid, (img, aud), mel in zip(ids, encoded, mels):
        writer.write_clip(cid, img, aud, mel)


def run_extraction(data_root: str | Path, subset: str, cache_path: str | Path, backend: str = "zarr",
                   enc_cfg: EncoderConfig | None = None, splits: Sequence[str] | None = None,
                   batch_size: int = 4, device: str = "auto", amp: str = "off", frames: int = 5,
                   store_log_mel: bool = False, progress: bool = True, num_workers: int = 0,
                   codec: str | None = None, verify: bool = False, sdpa: bool | None = None,
                   frames_per_forward: int = 0) -> ExtractSummary:
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
        verify: first read back every done clip and redo those whose data no longer decodes.
        sdpa: fused scaled-dot-product attention in the image encoder (exact rel-pos bias as the mask,
            :mod:`stbava.encoders.fast_attention`); None = on. On the 2-core AVX-512 CPU it made extraction
            1.17x the plain SAM loop (0.95x without; benchmarks/RESULTS.md §3); pass False on a CPU where
            it is not faster. Recorded (with ``amp``) in the fingerprint: a resumed run with other numerics
            is refused instead of mixing them in one cache.
        frames_per_forward: frames per image-encoder forward; 0 = sized from the encoder and the free
            memory (:func:`stbava.encoders.build.frames_per_forward`).

    Under torchrun every rank calls this with the same arguments; each returns the job-wide counts.

    Raises:
        DataError: unreadable input (names the file); CacheError: foreign/locked cache;
        CheckpointError: bad checkpoint; ConfigError: bad device/amp.
    """
    enc_cfg = enc_cfg or EncoderConfig()
    if amp not in ("off", "bf16"):
        raise ConfigError(f"--amp must be off or bf16, got {amp!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    dist = dist_info()
    dev = resolve_device(device, dist.local_rank)
    if amp == "bf16" and dev.type != "cuda":
        log.warning("--amp bf16 needs CUDA (bf16 autocast is much slower on CPUs); extracting in float32")
        amp = "off"
    clips = load_clips(data_root, subset, splits, frames=frames)
    if not clips:
        raise DataError(f"no clips of subset {subset} (splits {', '.join(splits or ['all'])}) under {data_root}")
    enc_cfg = record_paths(dataclasses.replace(enc_cfg, amp=amp, sdpa=enc_cfg.sdpa if sdpa is None else sdpa))
    fp = encoder_fingerprint(enc_cfg, frames)
    g = grid_size(enc_cfg.name)
    layout = {"fingerprint": fp, "frames": frames, "emb_shape": (256, g, g), "store_log_mel": store_log_mel}
    fpf = frames_per_forward or auto_frames_per_forward(enc_cfg.name, dev)
    # the encoder config with absolute weight paths: where later stages look for the files first
    info = {"device": dev.type, "stbava": __version__, "subset": subset, "encoders": dataclasses.asdict(enc_cfg)}
    start = time.perf_counter()
    sync = _Sync(dist)
    writer, todo, skipped = _open_writer(sync, clips, cache_path, backend, layout, codec, info, verify)
    with writer:
        if dist.is_main:
            log.info("extract %s -> %s: %d clips, %d already done, device %s, amp %s, %d frames per forward%s",
                     subset, cache_path, len(clips), skipped, dev, amp, fpf,
                     f", {dist.world} ranks" if dist.active else "")
        if todo:
            desc = f"extract (rank 0 of {dist.world})" if dist.active else "extract"
            bar = tqdm(total=len(todo) + (0 if dist.active else skipped), initial=0 if dist.active else skipped,
                       unit="clip", desc=desc, disable=not (progress and dist.is_main))
            _extract(writer, todo, enc_cfg, dev, batch_size, frames, store_log_mel, num_workers, bar, fpf)
        written = _finish_shards(sync, writer, len(todo))
    return ExtractSummary(cache=str(cache_path), backend=writer.backend, total=len(clips), written=written,
                          skipped=skipped, seconds=time.perf_counter() - start, device=str(dev),
                          fingerprint=fingerprint_digest(fp))


class _Sync:
    """The two meetings of an extraction's ranks (start: rank 0's plan; end: every rank done), on a CPU gloo
    group with a long timeout: one rank may wait a long time there (rank 0 verifying or merging a big cache,
    a slower GPU), which must not trip NCCL's default 10-minute collective timeout.
    """

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist
        self.group = tdist.new_group(backend="gloo", timeout=timedelta(hours=24)) if dist.active else None

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.dist.world
        tdist.all_gather_object(out, obj, group=self.group)
        return out


def _open_writer(sync: _Sync, clips: list[Clip], cache_path: str | Path, backend: str, layout: dict[str, Any],
                 codec: str | None, info: dict[str, Any], verify: bool = False
                 ) -> tuple[CacheWriter, list[Clip], int]:
    """This process's writer, the clips it must encode, and how many clips were done before the run.

    Under torchrun rank 0 alone creates/resumes the store (under a lock naming a fresh job token) and
    decides what is left; the other ranks wait for that, then join with the token. Sharding the *remaining*
    clips keeps ranks balanced on resume; it is deterministic because only rank 0 reads done flags for it.
    """
    dist = sync.dist
    pairs = [(c.id, c.split) for c in clips]
    if not dist.active:
        writer = create_cache(cache_path, backend, clips=pairs, codec=codec, info=info, **layout)
        if verify:
            writer.verify()
        todo = [c for c in clips if not writer.is_done(c.id)]
        return writer, todo, len(clips) - len(todo)
    plan: dict[str, Any] | None = None
    main_writer: CacheWriter | None = None
    if dist.is_main:
        job = uuid.uuid4().hex[:16]
        try:
            main_writer = create_cache(cache_path, backend, clips=pairs, codec=codec, info=info, job=job, **layout)
            if verify:
                main_writer.verify()
            plan = {"job": job, "manifest": main_writer.manifest.to_dict(),
                    "todo": [i for i, c in enumerate(clips) if not main_writer.is_done(c.id)]}
        except Exception as e:  # every rank must hear about it, or the others would wait forever
            sync.gather({"error": f"{type(e).__name__}: {e}"})
            raise
    plan = sync.gather(plan)[0]
    if plan is None or "error" in plan:
        raise CacheError(f"rank 0 could not open cache {cache_path}: {plan and plan['error']}")
    todo_all = [clips[i] for i in plan["todo"]]
    mine = todo_all[dist.rank::dist.world]
    if main_writer is None:
        main_writer = join_cache(cache_path, backend, job=plan["job"], rank=dist.rank, manifest=plan["manifest"],
                                 clips=[(c.id, c.split) for c in mine], **layout)
    return main_writer, mine, len(clips) - len(todo_all)


def _finish_shards(sync: _Sync, writer: CacheWriter, written: int) -> int:
    """Wait for every rank's clips, then (rank 0) merge HDF5 part files; returns clips written by all ranks.

    The other ranks do not wait for the merge (no collective can time out on it); torchrun returns once
    rank 0, which holds the lock until the store is complete, has finished.
    """
    dist = sync.dist
    if not dist.active:
        return written
    if not dist.is_main:
        writer.close()  # a part file is complete and closed before rank 0 reads it
    total = sum(int(n) for n in sync.gather(written))
    if dist.is_main:
        merged = merge_parts(writer)
        if merged:
            log.info("cache %s: merged %d clips written by ranks 1..%d", writer.path, merged, dist.world - 1)
    return total


def _extract(writer: CacheWriter, todo: list[Clip], enc_cfg: EncoderConfig, dev: torch.device, batch_size: int,
             frames: int, store_log_mel: bool, num_workers: int, bar: tqdm, frames_per_forward: int) -> None:
    image_encoder, vggish = build_frozen_encoders(enc_cfg, dev)
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
                encoded = encode_batch(image_encoder, vggish, items, dev, enc_cfg.amp, frames_per_forward)
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
