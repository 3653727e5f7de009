"""The one training recipe, shared by stage two (cached embeddings) and stage three (live encoder + adapters).

Only two things differ between the stages: the ``Net``'s embedder (cache pass-through or live encoders) and
the set of trainable parameter names. Everything else lives here once, as a recipe read top to bottom in the
torchtune / nanoGPT spirit: :meth:`Trainer.setup` (optimiser, run dir), :meth:`Trainer.resume`,
:meth:`Trainer.train_epoch`, :meth:`Trainer.end_epoch` (validation by AVSBench mIoU, best.pt) and
:meth:`Trainer.save`.

Exact resume: the batch order of epoch ``e`` is a pure function of ``(seed, e)`` (:mod:`.batches`);
checkpoints store the optimiser state, the global torch RNG state (dropout) and the position inside the
epoch, so N steps straight and N/2 steps + resume give the same weights on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from stbava.atomic import atomic_write_text
from stbava.checkpoint import CheckpointFormatError, check_compatible, read_checkpoint, save_checkpoint
from stbava.config import Config
from stbava.device import autocast, check_amp
from stbava.losses import masked_bce, masked_ce
from stbava.pipeline.core.distributed import dist_info
from stbava.pipeline.core.net import Net
from stbava.pipeline.core.sources import Batch
from stbava.pipeline.evaluate.loop import EvalResult, evaluate_net
from stbava.pipeline.train.batches import ZeroWeightPadding, batch_loader, epoch_batches
from stbava.pipeline.train.logger import MetricLogger
from stbava.pipeline.train.lr_schedule import lr_at
from stbava.pipeline.train.resident import ResidentClips
from stbava.state_dict import load_strict

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    step: int = 0  # optimiser steps done
    best_miou: float = -1.0
    epoch_loss: float = 0.0  # sum of ``epoch``'s step losses so far: a resumed epoch still logs its full mean

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


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


def trainable_predicate(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Names under any of ``prefixes`` (dot-terminated module paths) are trainable."""
    pre = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    return lambda name: name.startswith(pre)


def saved_weights(net: nn.Module, trainable: Iterable[str]) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the fusion model's buffers (the decoder's PE matrix travels with it)."""
    sd = net.state_dict()
    keep = set(trainable) | {f"model.{n}" for n, _ in net.model.named_buffers()}
    return {k: v for k, v in sd.items() if k in keep}


@dataclass
class Stage:
    """What distinguishes a stage for the loop: its checkpoint kind, trainable names and provenance."""

    kind: str  # "fusion" (stage two) | "adapters" (stage three)
    trainable: Callable[[str], bool]
    fingerprint: dict[str, Any] | None  # the encoders behind the embeddings (checked on resume)
    extra: dict[str, Any] | None = None  # stored in every checkpoint (cache path, stage-two checkpoint, ...)


class Trainer:
    """Train ``net`` on ``train_ds``, validating on ``val_ds`` every ``train.val_every`` epochs.

    Writes ``last.pt`` (every epoch and every ``save_every_steps``), ``best.pt`` (best val mIoU),
    ``metrics.jsonl`` and ``config.yaml`` into ``run_dir``; resumes from ``last.pt`` when present.
    """

    def __init__(self, cfg: Config, net: Net, stage: Stage, run_dir: str | Path, device: torch.device) -> None:
        self.cfg, self.net, self.stage, self.device = cfg, net, stage, device
        self.tc = cfg.train
        self.run_dir = Path(run_dir)
        self.dist = dist_info()
        self.state = LoopState()
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self.mlog = MetricLogger(self.run_dir / "metrics.jsonl", self.dist.is_main,
                                 tensorboard=self.tc.logger == "tensorboard")

    def setup(self) -> None:
        """Seed, select the trainable parameters, build the optimiser, clear temp files of killed saves."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml"):
                for tmp in self.run_dir.glob(f".{name}.*.tmp"):  # each up to a checkpoint's size
                    tmp.unlink(missing_ok=True)
        if self.dist.active and self.dist.is_main and self.tc.batch_size % self.dist.world:
            log.warning("train.batch_size %d is the global batch; it does not split evenly over %d ranks, so "
                        "some ranks idle on part of every step (use a multiple of %d)", self.tc.batch_size,
                        self.dist.world, self.dist.world)
        # bf16 on CPU only where native (stbava.bf16); recorded in every checkpoint as the training dtype
        self.numerics = check_amp(self.device, self.tc.amp, "train.amp: bf16", "train.amp: auto (or off)")
        if self.dist.is_main:
            log.info("training in %s on %s", self.numerics["dtype"], self.device)
        torch.manual_seed(self.tc.seed)
        self.names = set_trainable(self.net, self.stage.trainable)
        self.net.to(self.device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=self.tc.lr, weight_decay=self.tc.weight_decay)

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimiser, RNG and loop position (refused if it does not match)."""
        try:
            payload = read_checkpoint(self.last_path)
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"{e}; to go on, copy best.pt over last.pt (resumes from the best epoch), "
                                        "or start over with --no-resume or a new --out folder") from None
        check_compatible(payload, self.cfg, self.stage.fingerprint)
        load_strict(self.net, payload["weights"], f"{self.last_path} (start a new --out folder if it is another run's)",
                    required=self.names)
        self.opt.load_state_dict(payload["state"]["optimizer"])
        torch.set_rng_state(payload["state"]["rng"])
        self.state = LoopState(**payload["state"]["loop"])
        self.mlog.truncate_after(self.state.step)
        if self.dist.is_main:
            log.info("resumed from %s at epoch %d, step %d", self.last_path, self.state.epoch, self.state.step)

    def save(self, path: Path) -> None:
        if self.dist.is_main:
            save_checkpoint(path, kind=self.stage.kind, cfg=self.cfg,
                            weights=saved_weights(self.net, self.names), fingerprint=self.stage.fingerprint,
                            state={"optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                                   "loop": self.state.to_dict()},
                            extra={**(self.stage.extra or {}), "numerics": self.numerics}, trainable=self.names)

    def _loader(self, train_ds: Dataset, batches: list[list[int]]) -> Iterable[Batch]:
        if isinstance(train_ds, ResidentClips):  # already on the device: index it, no host loader
            return train_ds.batches(batches)
        return batch_loader(ZeroWeightPadding(train_ds), batches, self.tc.num_workers)

    def set_lr(self) -> float:
        """Set (and return) the lr of the next step from ``train.lr_schedule`` (a function of the step only)."""
        lr = lr_at(self.state.step, base_lr=self.tc.lr, total_steps=self.total_steps, schedule=self.tc.lr_schedule,
                   warmup_steps=self.tc.warmup_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, model: nn.Module, batch: Batch) -> float:
        """One optimiser step on one batch; returns the loss averaged over ranks."""
        batch = batch.to(self.device)
        with autocast(self.device, self.tc.amp):
            logits = model(**batch.inputs())
        loss_fn = masked_ce if logits.ndim == 5 else masked_bce  # [B,T,K,H,W] class scores (AVSS) or mask logits
        loss = self.dist.global_mean_loss(loss_fn(logits, batch.masks, batch.mask_valid), batch.mask_valid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return self.dist.mean_scalar(loss.detach())

    def train_epoch(self, model: nn.Module, train_ds: Dataset, progress: bool) -> tuple[bool, float]:
        """The rest of the current epoch (all of it unless resumed mid-epoch); returns (stopped, clips/s)."""
        from tqdm.auto import tqdm

        s, tc = self.state, self.tc
        batches = epoch_batches(len(train_ds), tc.batch_size, tc.seed, s.epoch, self.dist)  # type: ignore[arg-type]
        batches = batches[s.batch_in_epoch:]
        self.net.train()
        t0, seen = time.perf_counter(), 0
        if s.batch_in_epoch == 0:
            s.epoch_loss = 0.0
        bar = tqdm(self._loader(train_ds, batches), total=len(batches), desc=f"{self.stage.kind} epoch "
                   f"{s.epoch + 1}/{tc.epochs}", disable=not (progress and self.dist.is_main), leave=False,
                   unit="batch")
        for batch in bar:
            lr = self.set_lr()
            loss_v = self.train_step(model, batch)
            s.step += 1
            s.batch_in_epoch += 1
            s.epoch_loss += loss_v
            seen += len(batch.clip_ids) * self.dist.world
            bar.set_postfix(loss=f"{loss_v:.4f}", clips_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.1f}")
            self.mlog.write(kind="step", epoch=s.epoch, step=s.step, loss=loss_v, lr=lr)
            if tc.save_every_steps and s.step % tc.save_every_steps == 0:
                self.save(self.last_path)
            if tc.max_steps and s.step >= tc.max_steps:
                return True, seen / max(time.perf_counter() - t0, 1e-9)
        return False, seen / max(time.perf_counter() - t0, 1e-9)

    def end_epoch(self, n_batches: int, clips_per_s: float, val_ds: Dataset | None) -> EvalResult | None:
        """Close the epoch: log its mean loss, validate when due, keep best.pt."""
        s, tc = self.state, self.tc
        finished = s.epoch
        s.epoch += 1
        s.batch_in_epoch = 0
        record: dict[str, Any] = {"kind": "epoch", "epoch": finished, "step": s.step,
                                  "train_loss": s.epoch_loss / max(n_batches, 1), "clips_per_s": clips_per_s}
        val = None
        if val_ds is not None and len(val_ds) and (s.epoch % tc.val_every == 0 or s.epoch == tc.epochs):  # type: ignore[arg-type]
            val = evaluate_net(self.net, val_ds, self.device, batch_size=tc.batch_size, amp=tc.amp,
                               num_workers=tc.num_workers, progress=False)
            record.update(val_miou=val.miou, val_fscore=val.fscore)
            if val.miou > s.best_miou:
                s.best_miou = val.miou
                self.save(self.best_path)
        self.mlog.write(**record)
        return val

    def fit(self, train_ds: Dataset, val_ds: Dataset | None, *, resume: bool = True,
            progress: bool = True) -> dict[str, Any]:
        """Setup, resume, epochs until ``train.epochs`` or ``train.max_steps``; returns a summary dict."""
        self.setup()
        if resume and self.last_path.exists():
            self.resume()
        else:
            self.mlog.truncate_after(0)  # a fresh start (or --no-resume) does not append to an old run's numbers
        if self.dist.is_main:  # only once a resumed checkpoint is known to match: a refused run changes nothing
            import yaml

            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        model = self.dist.wrap(self.net)
        n = len(train_ds)  # type: ignore[arg-type]
        # The schedule spans train.epochs; train.max_steps only stops the run (so a stopped run resumes exactly).
        self.total_steps = self.tc.epochs * math.ceil(n / self.tc.batch_size)
        last_val: EvalResult | None = None
        stop = bool(self.tc.max_steps and self.state.step >= self.tc.max_steps)  # a resumed finished run: no step
        while self.state.epoch < self.tc.epochs and not stop:
            stop, rate = self.train_epoch(model, train_ds, progress)
            n_batches = len(epoch_batches(n, self.tc.batch_size, self.tc.seed, self.state.epoch, self.dist))
            if not stop or self.state.batch_in_epoch >= n_batches:
                last_val = self.end_epoch(n_batches, rate, val_ds) or last_val
            self.save(self.last_path)
        if self.dist.is_main and not self.best_path.exists():
            self.save(self.best_path)  # no validation split: best == last
        self.mlog.close()
        self.dist.barrier()
        return {"steps": self.state.step, "epochs": self.state.epoch, "best_miou": self.state.best_miou,
                "val": last_val.summary() if last_val else None, "run_dir": str(self.run_dir),
                "best": str(self.best_path), "last": str(self.last_path)}


def fit(cfg: Config, net: Net, train_ds: Dataset, val_ds: Dataset | None, run_dir: str | Path, *, kind: str,
        trainable: Callable[[str], bool], fingerprint: dict[str, Any] | None, device: torch.device,
        extra: dict[str, Any] | None = None, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run the recipe: ``Trainer(cfg, net, Stage(kind, trainable, fingerprint, extra), run_dir, device).fit``."""
    trainer = Trainer(cfg, net, Stage(kind, trainable, fingerprint, extra), run_dir, device)
    return trainer.fit(train_ds, val_ds, resume=resume, progress=progress)
