"""``stbava experiment``: every variant of a spec x every seed, trained on one cache, evaluated, tabulated.

Each run lives in ``OUT/runs/<variant>/seed<k>/`` and leaves, in order:

- ``experiment.json``: the resolved config (and stage-three overrides) it was asked for. A later call with
  another config for the same folder is refused (reported as a failed run), never silently mixed;
- stage two's ``best.pt``/``last.pt``/``config.yaml``/``metrics.jsonl`` (stage three's in ``adapters/``);
- ``train.json``: per finished stage, the training summary and its wall time. A stage recorded there is not
  trained again; an unrecorded one is (re)started and resumes exactly from its ``last.pt``;
- ``eval_<split>.json`` (and ``eval_<split>_shuffled_audio.json`` for the full model): ``stbava eval`` reports;
- ``result_<split>.json``: the row's numbers. A run with this file is finished and is skipped on re-run.

A run that raises is recorded as failed (with its message) and the others go on; Ctrl-C / SIGKILL stop the
whole experiment, and the next call continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.checkpoint import read_checkpoint
from stbava.config import Config, ConfigError
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.experiment_report import write_results
from stbava.pipeline.experiment_spec import Spec, Variant, load_spec, variant_config

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """One variant x seed: its numbers, or why it failed."""

    variant: str
    seed: int
    status: str  # "done" | "failed"
    run_dir: str
    miou: float | None = None  # fractions in [0, 1], as `stbava eval` reports them
    fscore: float | None = None
    shuffled_miou: float | None = None  # full model only: each clip scored with another clip's audio
    shuffled_fscore: float | None = None
    trainable_params: int | None = None  # parameters trained in any stage of the run
    train_s: float | None = None  # wall time of training; with resumed=True only the part after the resume
    resumed: bool = False  # some stage continued from a last.pt left by an interrupted call
    skipped: bool = False  # finished by an earlier call: nothing was trained or evaluated now
    error: str | None = None


@dataclass
class Context:
    """What every run of one experiment shares."""

    cache: Path
    data_root: Path
    out: Path
    split: str
    device: str
    progress: bool
    extra: dict[str, Any]  # config overrides applied to every run
    search: WeightSearch | None = None  # where the encoders' weight files are looked for (stage three, eval)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def claim_run_dir(run_dir: Path, request: dict[str, Any]) -> None:
    """Record what this folder is for; refuse a folder that already holds a run of another config."""
    have = _read_json(run_dir / "experiment.json")
    if have is not None and have != request:
        raise ConfigError(f"{run_dir} holds a run of another config or fine-tune (see its experiment.json); "
                          "delete the folder or use another --out")
    if have is None:
        _write_json(run_dir / "experiment.json", request)


def trainable_params(checkpoints: Sequence[Path]) -> int:
    """Parameters trained in any of the run's stages: the checkpoints' weights minus the model's buffers.

    A checkpoint stores exactly its stage's trainable parameters plus the fusion model's buffers (the
    decoder's positional-encoding matrix), so counting its non-buffer tensors counts what was trained.
    """
    from stbava.checkpoint import checkpoint_config
    from stbava.pipeline.net import build_fusion_net

    sizes: dict[str, int] = {}
    buffers: set[str] = set()
    for path in checkpoints:
        payload = read_checkpoint(path)
        cfg = checkpoint_config(payload)
        buffers |= {f"model.{n}" for n, _ in build_fusion_net(cfg).model.named_buffers()}
        sizes.update({k: v.numel() for k, v in payload["weights"].items()})
    return sum(n for k, n in sizes.items() if k not in buffers)


def train_stages(cfg: Config, variant: Variant, run_dir: Path, ctx: Context) -> tuple[list[Path], float, bool]:
    """Stage two, then stage three when the variant asks; returns (best checkpoints, train seconds, resumed)."""
    from stbava.pipeline.stage2 import train_fusion
    from stbava.pipeline.stage3 import finetune_adapters

    record = _read_json(run_dir / "train.json") or {}
    stages = [("fusion", run_dir)] + ([("adapters", run_dir / "adapters")] if variant.finetune is not None else [])
    for kind, stage_dir in stages:
        if kind in record:
            continue
        resumed = (stage_dir / "last.pt").exists()  # left by an interrupted call: fit resumes from it
        t0 = time.perf_counter()
        if kind == "fusion":
            summary = train_fusion(cfg, ctx.cache, ctx.data_root, stage_dir, device=ctx.device,
                                   progress=ctx.progress, search=ctx.search)
        else:
            summary = finetune_adapters(run_dir / "best.pt", ctx.data_root, stage_dir, variant.finetune or {},
                                        device=ctx.device, progress=ctx.progress, search=ctx.search)
        record[kind] = {"summary": summary, "train_s": time.perf_counter() - t0, "resumed": resumed}
        _write_json(run_dir / "train.json", record)
    train_s = sum(r["train_s"] for r in record.values())
    resumed = any(r["resumed"] for r in record.values())
    return [d / "best.pt" for _, d in stages], train_s, resumed


def evaluate_run(best: Path, run_dir: Path, ctx: Context, shuffled: bool) -> dict[str, float]:
    """Own-audio scores (and shuffled-audio scores when asked) of the run's final checkpoint."""
    from stbava.pipeline.evaluate import run_eval

    out: dict[str, float] = {}
    for shuffle in (False, True) if shuffled else (False,):
        name = f"eval_{ctx.split}{'_shuffled_audio' if shuffle else ''}.json"
        result, _ = run_eval(best, ctx.data_root, ctx.split, run_dir / name, cache=ctx.cache, device=ctx.device,
                             shuffle_audio=shuffle, progress=ctx.progress, search=ctx.search)
        prefix = "shuffled_" if shuffle else ""
        out[f"{prefix}miou"], out[f"{prefix}fscore"] = result.miou, result.fscore
    return out


def run_one(spec: Spec, variant: Variant, seed: int, ctx: Context) -> RunResult:
    """Train (or resume, or skip) and evaluate one variant x seed; exceptions propagate to the caller."""
    run_dir = ctx.out / "runs" / variant.name / f"seed{seed}"
    result_path = run_dir / f"result_{ctx.split}.json"
    cfg = variant_config(spec, variant, seed, ctx.extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir, {"variant": variant.name, "seed": seed, "config": cfg.to_dict(),
                            "finetune": variant.finetune})
    done = _read_json(result_path)
    if done is not None:
        return RunResult(**{**done, "skipped": True})
    checkpoints, train_s, resumed = train_stages(cfg, variant, run_dir, ctx)
    scores = evaluate_run(checkpoints[-1], run_dir, ctx, shuffled=variant.name == spec.full)
    res = RunResult(variant.name, seed, "done", str(run_dir), trainable_params=trainable_params(checkpoints),
                    train_s=train_s, resumed=resumed, **scores)
    _write_json(result_path, {k: v for k, v in dataclasses.asdict(res).items() if k != "skipped"})
    return res


def run_experiment(spec_path: str | Path, cache: str | Path, data_root: str | Path, out: str | Path, *,
                   seeds: Sequence[int] = (0, 1, 2), split: str = "test", device: str = "auto",
                   progress: bool = True, extra: Mapping[str, Any] | None = None,
                   search: WeightSearch | None = None) -> dict[str, Any]:
    """Run (or continue) every variant x seed of the spec; returns what ``OUT/results.json`` holds.

    Every run's config is resolved before anything trains, so a typo in the spec fails at once. Results are
    rewritten after each run, so a long experiment always has a current, partial table.
    """
    spec = load_spec(spec_path)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    for v in spec.variants:
        variant_config(spec, v, seeds[0], extra)
    ctx = Context(Path(cache), Path(data_root), Path(out), split, device, progress, dict(extra or {}), search)
    runs: list[RunResult] = []
    total = len(spec.variants) * len(seeds)
    for v in spec.variants:
        for seed in seeds:
            log.info("experiment run %d/%d: %s seed %d", len(runs) + 1, total, v.name, seed)
            try:
                runs.append(run_one(spec, v, seed, ctx))
            except Exception as e:  # a failed run is a row of the table, not the end of the others
                log.exception("run %s seed %d failed", v.name, seed)
                run_dir = ctx.out / "runs" / v.name / f"seed{seed}"
                runs.append(RunResult(v.name, seed, "failed", str(run_dir), error=f"{type(e).__name__}: {e}"))
            results = write_results(spec, [dataclasses.asdict(r) for r in runs], list(seeds), split, ctx.out)
    return results
