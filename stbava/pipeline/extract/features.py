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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from stbava.cache import CacheError, CacheWriter, create_cache, join_cache, merge_parts
from stbava.config import ConfigError, EncoderConfig
from stbava.data.clips import AVSS_MAX_FRAMES, Clip, DataError, load_clips
from stbava.device import check_amp, resolve_device
from stbava.encoders.build import auto_frames_per_forward, build_frozen_encoders
from stbava.encoders.fingerprint import encoder_fingerprint, fingerprint_digest
from stbava.encoders.image import embedding_shape
from stbava.encoders.weights import record_paths
from stbava.pipeline.core.distributed import DistInfo, dist_info
from stbava.pipeline.extract.clip_encoding import ClipInputs, as_list, encode_batch, pad_frames
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


def _write_batch(writer: CacheWriter, ids: list[str], encoded: list[tuple[np.ndarray, np.ndarray]],
                 mels: list[np.ndarray | None]) -> None:
    t = writer.manifest.frames  # shorter clips (AVSS v1s / v1m) are stored with zero padding frames
    for cid, (img, aud), mel in zip(ids, encoded, mels):
        writer.write_clip(cid, pad_frames(img, t), pad_frames(aud, t), None if mel is None else pad_frames(mel, t))


def run_extraction(data_root: str | Path, subset: str, cache_path: str | Path, backend: str = "zarr",
                   enc_cfg: EncoderConfig | None = None, splits: Sequence[str] | None = None,
                   batch_size: int = 4, device: str = "auto", amp: str = "off", frames: int = 5,
                   store_log_mel: bool = False, progress: bool = True, num_workers: int = 0,
                   codec: str | None = None, verify: bool = False, sdpa: bool | None = None,
                   frames_per_forward: int = 0, avss_parts: str | Sequence[str] | None = None) -> ExtractSummary:
    """Encode every clip of the selected splits into the cache at ``cache_path`` (resuming a previous run).

    Args:
        data_root: AVSBench subset folder (or its parent).
        subset: ``s4`` | ``ms3`` | ``avss`` (then ``frames`` is 10: 5-frame clips are padded with zero frames).
        cache_path: store to create or resume (``.zarr`` directory / ``.h5`` file).
        backend: ``zarr`` | ``hdf5``; must match an existing store.
        enc_cfg: encoder name, checkpoints, seed (defaults: tiny random encoders).
        splits: subset of train/val/test; all when None.
        batch_size: clips per encoder forward (batch_size * frames images).
        device: ``auto`` (CUDA when present) | ``cpu`` | ``cuda``.
        amp: ``off`` | ``bf16`` (CUDA; on CPU where it is native, else refused: :func:`stbava.device.check_amp`).
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
        avss_parts: AVSS label sets to extract (``"v1s,v1m,v2"``; None = all).

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
    numerics = check_amp(dev, amp, "--amp bf16", "--amp off")  # bf16 on CPU only where native (stbava.bf16)
    if subset == "avss":
        frames = AVSS_MAX_FRAMES
    clips = load_clips(data_root, subset, splits, frames=frames, avss_parts=avss_parts)
    if not clips:
        raise DataError(f"no clips of subset {subset} (splits {', '.join(splits or ['all'])}) under {data_root}")
    enc_cfg = record_paths(dataclasses.replace(enc_cfg, amp=amp, sdpa=enc_cfg.sdpa if sdpa is None else sdpa))
    fp = encoder_fingerprint(enc_cfg, frames)
    layout = {"fingerprint": fp, "frames": frames, "emb_shape": embedding_shape(enc_cfg.name, enc_cfg.high_res_features),
              "store_log_mel": store_log_mel}
    fpf = frames_per_forward or auto_frames_per_forward(enc_cfg.name, dev)
    # the encoder config with absolute weight paths: where later stages look for the files first
    info = {"device": dev.type, "stbava": __version__, "subset": subset, "encoders": dataclasses.asdict(enc_cfg),
            "numerics": numerics}
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
    loader = DataLoader(ClipInputs(todo, enc_cfg.name, frames), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=as_list, pin_memory=dev.type == "cuda",
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
