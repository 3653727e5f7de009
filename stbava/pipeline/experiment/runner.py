"""``stbava experiment``: every variant of a spec x every seed, trained on one cache, evaluated, tabulated.

Each run lives in ``OUT/runs/<variant>/seed<k>/`` and leaves, in order:

- ``experiment.json``: the run's key (:mod:`.experiment_key`): the resolved config, stage three's resolved
  recipe, the cache's encoder fingerprint and clip index, the data's metadata digest. A later call whose
  key differs is refused with the differences named (``--rerun-changed``: the folder is emptied and the run
  trained again), never silently reused;
- stage two's ``best.pt``/``last.pt``/``config.yaml``/``metrics.jsonl`` (stage three's in ``adapters/``);
- ``train.json``: per finished stage, the training summary and its wall time. A stage recorded there is not
  trained again; an unrecorded one is (re)started and resumes exactly from its ``last.pt``;
- ``eval_<split>.json`` (and ``eval_<split>_shuffled_audio.json`` for the full model): ``stbava eval`` reports;
- ``result_<split>.json``: the row's numbers and the key plus the split. A run with this file and the same
  key is finished and is skipped on re-run.

A run refused by a user-facing error (a config, cache, checkpoint or data error) is a row marked refused with
its reason; any other exception is a bug, marked failed, its traceback logged and kept in ``results.json``;
the others go on either way. Ctrl-C / SIGKILL stop the whole experiment, and the next call continues.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stbava.atomic import atomic_write_text
from stbava.checkpoint import read_checkpoint, trained_names
from stbava.config import Config, ConfigError, deep_update
from stbava.encoders.weights import WeightSearch
from stbava.pipeline.core.user_errors import USER_ERRORS
from stbava.pipeline.experiment.key import cache_identity, claim_run_dir, data_identity, train_key
from stbava.pipeline.experiment.report import write_results
from stbava.pipeline.experiment.spec import Spec, Variant, load_spec, variant_config
from stbava.pipeline.train.stage3 import resolve_stage_three

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """One variant x seed: its numbers, or why it failed."""

    variant: str
    seed: int
    status: str  # "done" | "refused" (a user-facing error: config, cache, data) | "failed" (a bug)
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
    traceback: str | None = None  # failed runs: where the bug is


@dataclass
class Context:
    """What every run of one experiment shares."""

    cache: Path
    data_root: Path
    out: Path
    split: str
    device: str
    progress: bool
    extra: dict[str, Any]  # config overrides applied to every run (--set), stage three's recipe included
    search: WeightSearch | None = None  # where the encoders' weight files are looked for (stage three, eval)
    rerun_changed: bool = False  # a run folder made from other inputs is emptied and retrained (else refused)
    cache_id: dict[str, Any] = dataclasses.field(default_factory=dict)  # experiment_key.cache_identity


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def trainable_params(checkpoints: Sequence[Path]) -> int | None:
    """Parameters trained in any of the run's stages, from the checkpoints' trained names and shapes.

    None when a checkpoint does not record its trained names (written by an earlier stbava).
    """
    sizes: dict[str, int] = {}
    for path in checkpoints:
        payload = read_checkpoint(path)
        names = trained_names(payload)
        if names is None:
            return None
        sizes.update({k: payload["weights"][k].numel() for k in names})
    return sum(sizes.values())


def stage_three_overrides(variant: Variant, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The variant's stage-three recipe with the experiment's overrides (``--set``) on top, so they win.

    The ``encoder`` section is left out: stage three runs the encoders stage two was trained on, and refuses
    an encoder section (:func:`stbava.pipeline.train.stage3.resolve_stage_three`); the rest of ``extra``
    equals what stage two's checkpoint already holds or is a training field the recipe would otherwise set.
    """
    sets = {k: v for k, v in extra.items() if k != "encoder"}
    return deep_update(copy.deepcopy(dict(variant.finetune or {})), copy.deepcopy(sets))


def train_stages(cfg: Config, variant: Variant, run_dir: Path, ctx: Context) -> tuple[list[Path], float, bool]:
    """Stage two, then stage three when the variant asks; returns (best checkpoints, train seconds, resumed)."""
    from stbava.pipeline.train.stage2 import train_fusion
    from stbava.pipeline.train.stage3 import finetune_adapters

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
            summary = finetune_adapters(run_dir / "best.pt", ctx.data_root, stage_dir,
                                        stage_three_overrides(variant, ctx.extra),
                                        device=ctx.device, progress=ctx.progress, search=ctx.search)
        record[kind] = {"summary": summary, "train_s": time.perf_counter() - t0, "resumed": resumed}
        _write_json(run_dir / "train.json", record)
    train_s = sum(r["train_s"] for r in record.values())
    resumed = any(r["resumed"] for r in record.values())
    return [d / "best.pt" for _, d in stages], train_s, resumed


def evaluate_run(best: Path, run_dir: Path, ctx: Context, shuffled: bool) -> dict[str, float]:
    """Own-audio scores (and shuffled-audio scores when asked) of the run's final checkpoint."""
    from stbava.pipeline.evaluate.loop import run_eval

    out: dict[str, float] = {}
    for shuffle in (False, True) if shuffled else (False,):
        name = f"eval_{ctx.split}{'_shuffled_audio' if shuffle else ''}.json"
        result, _ = run_eval(best, ctx.data_root, ctx.split, run_dir / name, cache=ctx.cache, device=ctx.device,
                             shuffle_audio=shuffle, progress=ctx.progress, search=ctx.search)
        prefix = "shuffled_" if shuffle else ""
        out[f"{prefix}miou"], out[f"{prefix}fscore"] = result.miou, result.fscore
    return out


def run_key(spec: Spec, variant: Variant, seed: int, ctx: Context) -> dict[str, Any]:
    """The training key of one variant x seed (:func:`.experiment_key.train_key`); resolves every config."""
    cfg = variant_config(spec, variant, seed, ctx.extra)
    stage3 = None if variant.finetune is None else resolve_stage_three(
        cfg, stage_three_overrides(variant, ctx.extra), f"variant {variant.name!r}")
    return train_key(cfg, variant.name, seed, variant.finetune, stage3, ctx.cache_id,
                     data_identity(ctx.data_root, cfg.subset), sets=ctx.extra)


def run_one(spec: Spec, variant: Variant, seed: int, ctx: Context) -> RunResult:
    """Train (or resume, or skip) and evaluate one variant x seed; exceptions propagate to the caller."""
    run_dir = ctx.out / "runs" / variant.name / f"seed{seed}"
    result_path = run_dir / f"result_{ctx.split}.json"
    cfg = variant_config(spec, variant, seed, ctx.extra)
    key = run_key(spec, variant, seed, ctx)
    claim_run_dir(run_dir, key, ctx.rerun_changed)
    result_key = {**key, "split": ctx.split}
    done = _read_json(result_path)
    if done is not None and done.pop("key", None) == result_key:
        return RunResult(**{**done, "skipped": True})
    checkpoints, train_s, resumed = train_stages(cfg, variant, run_dir, ctx)
    scores = evaluate_run(checkpoints[-1], run_dir, ctx, shuffled=variant.name == spec.full)
    res = RunResult(variant.name, seed, "done", str(run_dir), trainable_params=trainable_params(checkpoints),
                    train_s=train_s, resumed=resumed, **scores)
    record = {k: v for k, v in dataclasses.asdict(res).items() if k != "skipped"}
    _write_json(result_path, {**record, "key": result_key})
    return res


def guarded_run(spec: Spec, variant: Variant, seed: int, ctx: Context) -> RunResult:
    """:func:`run_one`, with a refusal (a user-facing error) or a bug (anything else) turned into its row."""
    run_dir = str(ctx.out / "runs" / variant.name / f"seed{seed}")
    try:
        return run_one(spec, variant, seed, ctx)
    except USER_ERRORS as e:  # a config, cache, checkpoint or data the run cannot use: say why, no traceback
        log.error("run %s seed %d refused: %s", variant.name, seed, e)
        return RunResult(variant.name, seed, "refused", run_dir, error=f"{type(e).__name__}: {e}")
    except Exception as e:  # a bug: the row says failed, the log and results.json keep the traceback
        log.exception("run %s seed %d failed", variant.name, seed)
        return RunResult(variant.name, seed, "failed", run_dir, error=f"{type(e).__name__}: {e}",
                         traceback=traceback.format_exc())


def run_experiment(spec_path: str | Path, cache: str | Path, data_root: str | Path, out: str | Path, *,
                   seeds: Sequence[int] = (0, 1, 2), split: str = "test", device: str = "auto",
                   progress: bool = True, extra: Mapping[str, Any] | None = None,
                   search: WeightSearch | None = None, rerun_changed: bool = False) -> dict[str, Any]:
    """Run (or continue) every variant x seed of the spec; returns what ``OUT/results.json`` holds.

    Every run's config (and stage-three recipe) is resolved before anything trains, so a typo in the spec
    fails at once. Results are rewritten after each run, so a long experiment always has a current table.
    ``extra``: config overrides (``--set``) on top of every variant's config and stage-three recipe; part
    of every run's key. ``rerun_changed``: retrain runs whose folder was made from other inputs (else they are refused).
    """
    spec = load_spec(spec_path)
    train_sets = (extra or {}).get("train")
    if isinstance(train_sets, Mapping) and "seed" in train_sets:
        raise ConfigError("--set train.seed is not for experiments: give the seeds with --seeds")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    ctx = Context(Path(cache), Path(data_root), Path(out), split, device, progress, dict(extra or {}), search,
                  rerun_changed, cache_identity(cache))
    for v in spec.variants:
        run_key(spec, v, seeds[0], ctx)
    runs: list[RunResult] = []
    total = len(spec.variants) * len(seeds)
    results: dict[str, Any] = {}
    for v in spec.variants:
        for seed in seeds:
            log.info("experiment run %d/%d: %s seed %d", len(runs) + 1, total, v.name, seed)
            runs.append(guarded_run(spec, v, seed, ctx))
            results = write_results(spec, [dataclasses.asdict(r) for r in runs], list(seeds), split, ctx.out)
    return results
