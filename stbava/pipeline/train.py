"""The one training loop, shared by stage two (cached embeddings) and stage three (live encoder + adapters).

Only two things differ between the stages: the ``Net``'s embedder (cache pass-through or live encoders) and
the set of trainable parameter names. Everything else (deterministic batch order, exact resume, validation by
AVSBench mIoU, best/last checkpoints, metrics.jsonl) lives here once.

Exact resume: the batch order of epoch ``e`` is a pure function of ``(seed, e)``; checkpoints store the
optimiser state, the global torch RNG state (dropout) and the position inside the epoch, so N steps straight
and N/2 steps + resume give the same weights on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stbava.checkpoint import (CheckpointFormatError, atomic_write_text, check_compatible, read_checkpoint,
                               save_checkpoint)
from stbava.config import Config
from stbava.pipeline.distributed import DistInfo, dist_info
from stbava.pipeline.evaluate import EvalResult, evaluate_net
from stbava.pipeline.net import Net, amp_context
from stbava.pipeline.sources import Batch, ResidentClips, collate

log = logging.getLogger(__name__)


def masked_bce(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the annotated frames only (S4 train: frame 1; MS3: all; REFERENCE §7).

    Args:
        logits: [B,T,H,W]; masks: [B,T,H,W] {0,1}; valid: [B,T] bool.
    """
    per_frame = F.binary_cross_entropy_with_logits(logits.float(), masks.float(), reduction="none").mean((-2, -1))
    w = valid.float()
    return (per_frame * w).sum() / w.sum().clamp_min(1.0)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The clip order of one epoch: a pure function of (seed, epoch), so resume replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, dist: DistInfo) -> list[list[int]]:
    """Global batches of ``batch_size`` clips; under DDP each rank takes its contiguous share of every batch.

    The global batch (and so the loss averaged over ranks) is the same for any world size, which is what makes
    multi-rank training reproduce single-process training. A rank whose share is empty (a last batch smaller
    than the world) gets ``[-1 - i]``: clip ``i`` with no annotated frame (see :class:`ZeroWeightPadding`).
    """
    order = epoch_order(n, seed, epoch)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if dist.world == 1:
        return batches
    out = []
    for b in batches:
        per = math.ceil(len(b) / dist.world)
        out.append(b[dist.rank * per:(dist.rank + 1) * per] or [-1 - b[0]])
    return out


class ZeroWeightPadding(Dataset):
    """``ds`` plus index ``-1 - i``: clip ``i`` with every frame marked unannotated.

    DDP all-reduces gradients on every rank at every step, so a rank with no clips of a global batch must still
    run forward and backward; with no annotated frame its loss and its gradient are exactly zero.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= 0:
            return self.ds[i]
        item = dict(self.ds[-1 - i])
        item["mask_valid"] = torch.zeros_like(torch.as_tensor(item["mask_valid"]))
        return item


@dataclass
class LoopState:
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    step: int = 0  # optimiser steps done
    best_miou: float = -1.0
    epoch_loss: float = 0.0  # sum of ``epoch``'s step losses so far: a resumed epoch still logs its full mean

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not (self.enabled and self.path.exists()):
            return
        keep = []
        for ln in self.path.read_text().splitlines():
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except json.JSONDecodeError:
                continue  # blank, or the last line of a run killed while writing it
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def set_trainable(net: nn.Module, is_trainable: Callable[[str], bool]) -> list[str]:
    """Set ``requires_grad`` from a name predicate; returns the trainable names (checked non-empty)."""
    names = []
    for name, p in net.named_parameters():
        p.requires_grad_(is_trainable(name))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError("no trainable parameters selected")
    return names


def saved_weights(net: nn.Module, trainable: Iterable[str]) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the fusion model's buffers (the decoder's PE matrix travels with it)."""
    sd = net.state_dict()
    keep = set(trainable) | {f"model.{n}" for n, _ in net.model.named_buffers()}
    return {k: v for k, v in sd.items() if k in keep}


def _make_loader(ds: Dataset, batches: list[list[int]], num_workers: int) -> DataLoader:
    # An explicit generator keeps the DataLoader from drawing on the global RNG (dropout's), so resume is exact.
    return DataLoader(ds, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      generator=torch.Generator(), persistent_workers=False, pin_memory=False)


def fit(
    cfg: Config,
    net: Net,
    train_ds: Dataset,
    val_ds: Dataset | None,
    run_dir: str | Path,
    *,
    kind: str,
    trainable: Callable[[str], bool],
    fingerprint: dict[str, Any] | None,
    device: torch.device,
    extra: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``net`` on ``train_ds``, validating on ``val_ds`` each ``val_every`` epochs.

    Writes ``last.pt`` (every epoch and every ``save_every_steps``), ``best.pt`` (best val mIoU),
    ``metrics.jsonl`` and ``config.yaml`` into ``run_dir``. Resumes from ``last.pt`` when present.

    Returns:
        Summary dict: steps, epochs, best_miou, last val metrics, paths.
    """
    from tqdm.auto import tqdm

    dist = dist_info()
    tc = cfg.train
    run_dir = Path(run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if dist.active and dist.is_main and tc.batch_size % dist.world:
        log.warning("train.batch_size %d is the global batch; it does not split evenly over %d ranks, so some "
                    "ranks idle on part of every step (use a multiple of %d)", tc.batch_size, dist.world, dist.world)
    torch.manual_seed(tc.seed)
    names = set_trainable(net, trainable)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    state = LoopState()
    mlog = MetricsLog(run_dir / "metrics.jsonl", dist.is_main)

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if dist.is_main:  # temp files of saves cut short by a kill (each up to a checkpoint's size)
        for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml"):
            for tmp in run_dir.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
    if resume and last_path.exists():
        try:
            payload = read_checkpoint(last_path)
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"{e}; to go on, copy best.pt over last.pt (resumes from the best epoch), "
                                        "or start over with --no-resume or a new --run-dir") from None
        check_compatible(payload, cfg, fingerprint)
        missing = set(names) - set(payload["weights"])
        if missing:
            raise CheckpointFormatError(f"{last_path}: lacks trainable weights {sorted(missing)[:4]}; start a new --run-dir")
        net.load_state_dict(payload["weights"], strict=False)
        opt.load_state_dict(payload["state"]["optimizer"])
        torch.set_rng_state(payload["state"]["rng"])
        state = LoopState(**payload["state"]["loop"])
        mlog.truncate_after(state.step)
        if dist.is_main:
            log.info("resumed from %s at epoch %d, step %d", last_path, state.epoch, state.step)
    else:
        mlog.truncate_after(0)  # a fresh start (or --no-resume) does not append to an old run's numbers
    if dist.is_main:  # only once a resumed checkpoint is known to match: a refused run changes nothing
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    ddp_net = dist.wrap(net)

    def save(path: Path) -> None:
        if dist.is_main:
            save_checkpoint(path, kind=kind, cfg=cfg, weights=saved_weights(net, names), fingerprint=fingerprint,
                            state={"optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                                   "loop": state.to_dict()}, extra=extra)

    n = len(train_ds)  # type: ignore[arg-type]
    last_val: EvalResult | None = None
    stop = False
    while state.epoch < tc.epochs and not stop:
        batches = epoch_batches(n, tc.batch_size, tc.seed, state.epoch, dist)[state.batch_in_epoch:]
        loader: Iterable[Batch]
        if isinstance(train_ds, ResidentClips):  # already on the device: index it, no host loader
            loader = train_ds.batches(batches)
        else:
            loader = _make_loader(ZeroWeightPadding(train_ds), batches, tc.num_workers)
        net.train()
        t0, seen = time.perf_counter(), 0
        if state.batch_in_epoch == 0:
            state.epoch_loss = 0.0
        bar = tqdm(loader, total=len(batches), desc=f"{kind} epoch {state.epoch + 1}/{tc.epochs}",
                   disable=not (progress and dist.is_main), leave=False, unit="batch")
        for batch in bar:
            batch = batch.to(device)
            with amp_context(device, tc.amp):
                logits = ddp_net(batch.image, batch.audio)
            loss = dist.global_mean_loss(masked_bce(logits, batch.masks, batch.mask_valid), batch.mask_valid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step += 1
            state.batch_in_epoch += 1
            seen += len(batch.clip_ids) * dist.world
            loss_v = dist.mean_scalar(loss.detach())
            state.epoch_loss += loss_v
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_v:.4f}", clips_s=f"{rate:.1f}")
            mlog.write(kind="step", epoch=state.epoch, step=state.step, loss=loss_v)
            if tc.save_every_steps and state.step % tc.save_every_steps == 0:
                save(last_path)
            if tc.max_steps and state.step >= tc.max_steps:
                stop = True
                break
        n_batches = len(epoch_batches(n, tc.batch_size, tc.seed, state.epoch, dist))
        epoch_done = not stop or state.batch_in_epoch >= n_batches
        if epoch_done:
            finished_epoch = state.epoch
            state.epoch += 1
            state.batch_in_epoch = 0
            record: dict[str, Any] = {"kind": "epoch", "epoch": finished_epoch, "step": state.step,
                                      "train_loss": state.epoch_loss / max(n_batches, 1),
                                      "clips_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
            if val_ds is not None and len(val_ds) and (state.epoch % tc.val_every == 0 or state.epoch == tc.epochs):  # type: ignore[arg-type]
                last_val = evaluate_net(net, val_ds, device, batch_size=tc.batch_size, amp=tc.amp,
                                        num_workers=tc.num_workers, progress=False)
                record.update(val_miou=last_val.miou, val_fscore=last_val.fscore)
                if last_val.miou > state.best_miou:
                    state.best_miou = last_val.miou
                    save(best_path)
            mlog.write(**record)
            if dist.is_main:  # one line per epoch, not one per rank
                log.info("epoch %d: %s", finished_epoch + 1,
                         ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        save(last_path)
    if dist.is_main and not best_path.exists():
        save(best_path)  # no validation split: best == last
    dist.barrier()
    return {"steps": state.step, "epochs": state.epoch, "best_miou": state.best_miou,
            "val": last_val.summary() if last_val else None, "run_dir": str(run_dir),
            "best": str(best_path), "last": str(last_path)}


def trainable_predicate(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Names under any of ``prefixes`` (dot-terminated module paths) are trainable."""
    pre = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    return lambda name: name.startswith(pre)
