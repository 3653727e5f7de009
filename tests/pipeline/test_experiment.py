"""``stbava experiment`` on tiny synthetic data: the table, skipping, exact resume, failures, the sweep plot.

Data: 2 train / 1 val / 2 test clips of 2 frames, tiny encoder; every run is 2 optimiser steps of depth 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import stbava.pipeline.evaluate.loop as evaluate_mod
import stbava.pipeline.train.stage2 as stage2_mod
import stbava.pipeline.train.stage3 as stage3_mod
from stbava.cli import main
from stbava.config import ConfigError, EncoderConfig, load_config
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.core.net import build_fusion_net
from stbava.pipeline.experiment.report import mean_std, pm
from stbava.pipeline.experiment.runner import run_experiment
from stbava.pipeline.experiment.spec import load_spec, variant_config
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 2
BASE = {"model.depth": 1, "train.epochs": 1, "train.batch_size": 1, "train.lr": 1.0e-3, "train.max_steps": 2,
        "train.save_every_steps": 1}
TABLE = {"title": "tiny table", "base": BASE, "full": "full",
         "variants": [{"name": "full", "label": "Full"},
                      {"name": "no_temporal", "label": "w/o temporal", "set": {"model.temporal": False}}]}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# These runs are a few tiny steps each; on 2 shared cores, 2 torch threads spend most of their CPU spinning
# (measured: ~7x the CPU time of 1 thread for the same run), so this module runs single-threaded.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experiment")
    write_synthetic(root / "data", "ms3", {"train": 2, "val": 1, "test": 2}, 1, frames=FRAMES)
    run_extraction(root / "data", "ms3", root / "cache.zarr", "zarr", None, batch_size=2, device="cpu",
                   progress=False, frames=FRAMES)
    return {"root": root, "data": root / "data", "cache": root / "cache.zarr"}


def _experiment(data, spec: Path, out: Path, seeds=(0, 1)) -> dict:
    return run_experiment(spec, data["cache"], data["data"], out, seeds=seeds, device="cpu", progress=False)


@pytest.fixture(scope="module")
def table(data) -> dict:
    """2 variants x 2 seeds through the real command, uninterrupted."""
    spec = write_spec(data["root"] / "table.yaml", TABLE)
    out = data["root"] / "A"
    res = CliRunner().invoke(main, ["experiment", str(spec), "--cache", str(data["cache"]), "--data-root",
                                    str(data["data"]), "--out", str(out), "--seeds", "0,1", "--device", "cpu",
                                    "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "4 runs done, 0 refused, 0 failed" in res.output
    return {"spec": spec, "out": out, "results": json.loads((out / "results.json").read_text())}


def _row(results: dict, name: str) -> dict:
    return next(r for r in results["variants"] if r["name"] == name)


def _per_run(results: dict, key: str) -> dict[tuple[str, int], float]:
    return {(r["variant"], r["seed"]): r[key] for v in results["variants"] for r in v["runs"]}


def test_every_run_is_trained_evaluated_and_recorded(table):
    res, out = table["results"], table["out"]
    for name, temporal in (("full", True), ("no_temporal", False)):
        row = _row(res, name)
        assert row["seeds_done"] == 2 and not row["failed"]
        for seed in (0, 1):
            run = out / "runs" / name / f"seed{seed}"
            asked = json.loads((run / "experiment.json").read_text())["config"]
            assert asked["train"]["seed"] == seed and asked["model"]["temporal"] is temporal
            assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed
            report = json.loads((run / "eval_test.json").read_text())
            assert report["clips"] == 2 and report["split"] == "test"
            assert _per_run(res, "miou")[(name, seed)] == report["miou"]
            assert _per_run(res, "fscore")[(name, seed)] == report["fscore"]
            assert (run / "eval_test_shuffled_audio.json").is_file() is (name == "full")
        # stage two trains every parameter of the fusion model (the decoder PE is a buffer)
        cfg = load_config(None, {"frames": FRAMES, "model": {"depth": 1, "temporal": temporal}})
        assert row["trainable_params"] == sum(p.numel() for p in build_fusion_net(cfg).model.parameters())
    full = _row(res, "full")
    shuffled = json.loads((out / "runs/full/seed1/eval_test_shuffled_audio.json").read_text())
    assert shuffled["shuffled_audio"] is True and full["shuffled_fscore"]["values"][1] == shuffled["fscore"]
    assert _row(res, "no_temporal")["shuffled_miou"] is None


def test_results_md_shows_mean_and_sample_std_of_the_seeds(table):
    md = (table["out"] / "results.md").read_text()
    for name, label in (("full", "Full"), ("no_temporal", "w/o temporal")):
        runs = _row(table["results"], name)["runs"]
        miou, f = [r["miou"] for r in runs], [r["fscore"] for r in runs]
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
        assert f"{statistics.mean(miou) * 100:.2f} ± {statistics.stdev(miou) * 100:.2f}" in line
        assert f"{statistics.mean(f):.3f} ± {statistics.stdev(f):.3f}" in line
        assert ", ".join(f"{v:.3f}" for v in f) in line and "2/2 done" in line
    assert "| Full | shuffled |" in md


def test_mean_std_convention():
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02))  # ((0.1^2)*2 / (2-1)) ** 0.5
    assert mean_std([0.3]) == (0.3, None) and mean_std([]) == (None, None)
    assert pm({"mean": 0.25, "std": None, "values": [0.25]}, 100, 2) == "25.00 ± —"


def test_rerun_skips_finished_runs(data, table, monkeypatch):
    ckpts = sorted(table["out"].glob("runs/*/seed*/*.pt"))
    mtimes = {p: p.stat().st_mtime_ns for p in ckpts}
    calls = []
    monkeypatch.setattr(stage2_mod, "train_fusion", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(evaluate_mod, "run_eval", lambda *a, **k: calls.append("eval"))
    again = _experiment(data, table["spec"], table["out"])  # the same cache and data: nothing changed
    assert calls == [] and len(ckpts) == 8
    assert {p: p.stat().st_mtime_ns for p in ckpts} == mtimes
    assert all(r["skipped"] for v in again["variants"] for r in v["runs"])
    assert _per_run(again, "miou") == _per_run(table["results"], "miou")
    assert _per_run(again, "fscore") == _per_run(table["results"], "fscore")


def test_killed_mid_run_then_rerun_gives_the_uninterrupted_table(data, table, tmp_path, monkeypatch):
    out = tmp_path / "B"
    shutil.copytree(table["out"] / "runs" / "full", out / "runs" / "full")  # finished by an earlier call
    real_step, steps = Trainer.train_step, []

    def killed_at_second_step(self, model, batch):
        steps.append(1)
        if len(steps) == 2:  # no_temporal seed 0: step 1 is done and saved (save_every_steps 1)
            raise KeyboardInterrupt
        return real_step(self, model, batch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", killed_at_second_step)
        with pytest.raises(KeyboardInterrupt):
            _experiment(data, table["spec"], out)
    run = out / "runs" / "no_temporal" / "seed0"
    assert torch.load(run / "last.pt", weights_only=True)["state"]["loop"]["step"] == 1
    assert not (run / "result_test.json").exists()
    steps.clear()
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", lambda self, model, batch: steps.append(1) or real_step(self, model, batch))
        resumed = _experiment(data, table["spec"], out)
    assert len(steps) == 1 + 2  # seed 0 continues from step 1 (not from scratch), seed 1 trains its 2 steps
    for key in ("miou", "fscore", "trainable_params"):
        assert _per_run(resumed, key) == _per_run(table["results"], key)
    assert [r["resumed"] for r in _row(resumed, "no_temporal")["runs"]] == [True, False]
    a = torch.load(table["out"] / "runs/no_temporal/seed0/last.pt", weights_only=True)["weights"]
    b = torch.load(run / "last.pt", weights_only=True)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["kind"] == "step"]
    ref = [json.loads(ln)["loss"] for ln in (table["out"] / "runs/no_temporal/seed0/metrics.jsonl").read_text()
           .splitlines() if json.loads(ln)["kind"] == "step"]
    assert loss == ref and len(loss) == 2


def test_a_bug_is_a_failed_row_with_its_traceback_and_the_sweep_is_plotted(data, tmp_path, monkeypatch):
    """A bug (any exception that is not a user-facing error) is marked failed, not refused, and keeps its
    traceback; the other runs go on. (Before, a refused config and a bug were both "failed".)"""
    real_train = stage2_mod.train_fusion

    def buggy_for_depth_3(cfg, *a, **k):
        if cfg.model.depth == 3:
            raise ZeroDivisionError("a bug in the loop")
        return real_train(cfg, *a, **k)

    monkeypatch.setattr(stage2_mod, "train_fusion", buggy_for_depth_3)
    spec = write_spec(tmp_path / "sweep.yaml", {
        "title": "tiny sweep", "base": BASE, "sweep": {"key": "model.depth", "values": [1, 2, 3]}})
    out = tmp_path / "C"
    res = CliRunner().invoke(main, ["experiment", str(spec), "--cache", str(data["cache"]), "--data-root",
                                    str(data["data"]), "--out", str(out), "--seeds", "0", "--device", "cpu",
                                    "--no-progress"])
    assert res.exit_code == 1 and "2 runs done, 0 refused, 1 failed" in res.output
    results = json.loads((out / "results.json").read_text())
    bad = _row(results, "depth3")
    assert bad["seeds_done"] == 0 and bad["failed"][0]["error"] == "ZeroDivisionError: a bug in the loop"
    assert "buggy_for_depth_3" in bad["runs"][0]["traceback"] and not bad["refused"]
    md = (out / "results.md").read_text()
    bad_line = next(ln for ln in md.splitlines() if ln.startswith("| model.depth=3 |"))
    assert "seed 0 failed: ZeroDivisionError" in bad_line
    depth_rows = [_row(results, "depth1"), _row(results, "depth2")]
    assert [r["seeds_done"] for r in depth_rows] == [1, 1]
    line = next(ln for ln in md.splitlines() if ln.startswith("| model.depth=2 |"))
    assert f"{depth_rows[1]['miou']['values'][0] * 100:.2f} ± —" in line  # one seed: no spread
    plot = results["plot"]
    assert plot["miou"]["x"] == [1.0, 2.0] and plot["fscore"]["x"] == [1.0, 2.0]
    assert plot["miou"]["y"] == [r["miou"]["values"][0] * 100 for r in depth_rows]
    assert plot["fscore"]["y"] == [r["fscore"]["values"][0] for r in depth_rows]
    with Image.open(out / plot["file"]) as img:
        assert img.format == "PNG" and img.size == (800, 320)


def test_finetune_variant_runs_stage_three_on_the_stage_two_checkpoint(data, tmp_path, monkeypatch):
    calls: list[dict] = []

    def fake_stage_three(init, data_root, run_dir, overrides, **kw):
        calls.append({"init": Path(init), "run_dir": Path(run_dir), "overrides": overrides})
        Path(run_dir).mkdir(parents=True)
        shutil.copy(init, Path(run_dir) / "best.pt")  # stands in for the adapter checkpoint
        return {"steps": 1}

    monkeypatch.setattr(stage3_mod, "finetune_adapters", fake_stage_three)
    spec = write_spec(tmp_path / "ft.yaml", {"base": BASE, "variants": [
        {"name": "tuned", "finetune": {"train.lr": 0.5}}]})
    _experiment(data, spec, tmp_path / "D", seeds=(3,))
    run = tmp_path / "D" / "runs" / "tuned" / "seed3"
    assert calls == [{"init": run / "best.pt", "run_dir": run / "adapters", "overrides": {"train": {"lr": 0.5}}}]
    assert json.loads((run / "eval_test.json").read_text())["checkpoint"] == str(run / "adapters" / "best.pt")
    assert set(json.loads((run / "train.json").read_text())) == {"fusion", "adapters"}
    # killed after training, before the result was recorded: no stage trains again, only eval runs
    (run / "result_test.json").unlink()
    monkeypatch.setattr(stage2_mod, "train_fusion", lambda *a, **k: calls.append("stage two"))
    again = _experiment(data, spec, tmp_path / "D", seeds=(3,))
    assert len(calls) == 1 and _row(again, "tuned")["seeds_done"] == 1


def test_a_run_folder_of_another_config_is_refused(data, table, tmp_path):
    out = tmp_path / "E"
    shutil.copytree(table["out"] / "runs" / "full" / "seed0", out / "runs" / "full" / "seed0")
    changed = {**TABLE, "base": {**BASE, "train.lr": 0.01}, "variants": TABLE["variants"][:1]}
    results = _experiment(data, write_spec(tmp_path / "changed.yaml", changed), out, seeds=(0,))
    row = _row(results, "full")
    assert not row["failed"] and row["seeds_done"] == 0
    assert "config.train.lr: 0.001 -> 0.01" in row["refused"][0]["error"]
    assert "--rerun-changed" in row["refused"][0]["error"]


@pytest.fixture(scope="module")
def other_cache(data) -> Path:
    """The same clips extracted again with another random encoder seed: other embeddings, same names."""
    path = data["root"] / "cache_seed1.zarr"
    run_extraction(data["data"], "ms3", path, "zarr", EncoderConfig(seed=1), batch_size=2, device="cpu",
                   progress=False, frames=FRAMES)
    return path


def test_a_rerun_on_a_re_extracted_cache_refuses_the_old_numbers_or_retrains(data, table, other_cache, tmp_path):
    """Re-running a spec into the same --out after re-extracting the cache with another encoder seed
    reported the old numbers (the cache was not part of the run's key): fails on that code."""
    out = tmp_path / "F"
    shutil.copytree(table["out"], out)
    refused = run_experiment(table["spec"], other_cache, data["data"], out, seeds=(0, 1), device="cpu",
                             progress=False)
    for row in refused["variants"]:
        assert row["seeds_done"] == 0 and len(row["refused"]) == 2
        assert "cache.fingerprint.image.weights: 'random-init seed=0" in row["refused"][0]["error"]
    rerun = run_experiment(table["spec"], other_cache, data["data"], out, seeds=(0, 1), device="cpu",
                           progress=False, rerun_changed=True)
    assert not any(r["skipped"] for v in rerun["variants"] for r in v["runs"])
    report = json.loads((out / "runs/full/seed0/eval_test.json").read_text())
    assert report["cache"] == str(other_cache) and report["miou"] == _per_run(rerun, "miou")[("full", 0)]
    assert report["cache_fingerprint"]["image"]["weights"].startswith("random-init seed=1")
    trained_on = torch.load(out / "runs/full/seed0/best.pt", weights_only=True)["fingerprint"]
    assert trained_on["image"]["weights"].startswith("random-init seed=1")  # retrained on the new cache
    key = json.loads((out / "runs/full/seed0/experiment.json").read_text())
    assert key["cache"]["fingerprint"]["image"]["weights"].startswith("random-init seed=1")


def test_the_run_key_holds_the_data_and_the_resolved_stage_three_recipe(data, table, tmp_path):
    key = json.loads((table["out"] / "runs/full/seed0/experiment.json").read_text())
    csv = next(data["data"].rglob("ms3_meta_data.csv"))
    assert key["data"]["metadata_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert key["finetune_resolved"] is None  # stage two only
    spec = load_spec(write_spec(tmp_path / "ft.yaml", {"base": BASE, "variants": [
        {"name": "tuned", "finetune": {"train.lr": 0.5}}]}))
    from stbava.pipeline.experiment.runner import Context, run_key

    ctx = Context(data["cache"], data["data"], tmp_path, "test", "cpu", False, {})
    resolved = run_key(spec, spec.variants[0], 0, ctx)["finetune_resolved"]
    assert resolved["train"]["lr"] == 0.5 and resolved["train"]["epochs"] == 15  # the stage-three recipe
    assert resolved["train"]["train_fusion"] is False


def test_spec_errors(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "b.yaml").write_text("model:\n  depth: 3\n")
    (tmp_path / "configs" / "experiments").mkdir()
    spec = write_spec(tmp_path / "configs" / "experiments" / "s.yaml",
                      {"base": "configs/b.yaml", "variants": [{"name": "a", "set": {"train.lr": 0.5}}]})
    loaded = load_spec(spec)  # the base is found in a folder above the spec
    cfg = variant_config(loaded, loaded.variants[0], seed=4)
    assert (cfg.model.depth, cfg.train.lr, cfg.train.seed) == (3, 0.5, 4)
    bad = [({"variants": [{"name": "a", "sett": {}}]}, "unknown key"),
           ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique"),
           ({"variants": [{"name": "a"}], "full": "b"}, "not a variant"),
           ({"sweep": {"key": "model.depth", "values": ["x"]}}, "list of numbers"),
           ({"base": "nowhere.yaml", "variants": [{"name": "a"}]}, "not found"),
           ({}, "no variants")]
    for data, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_spec(write_spec(tmp_path / "bad.yaml", data))
    typo = load_spec(write_spec(tmp_path / "typo.yaml", {"variants": [{"name": "a", "set": {"model.detph": 2}}]}))
    with pytest.raises(ConfigError, match="unknown key 'detph'"):
        variant_config(typo, typo.variants[0], 0)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path):
    """Structure and every variant's config (model.fusion names included) are checked, and every spec has its
    real-data / demo twin."""
    spec = load_spec(path)
    for v in spec.variants:
        assert variant_config(spec, v, seed=0).subset in ("ms3", "avss")
    name = path.name.removeprefix("demo_")
    assert (path.parent / name).is_file() and (path.parent / f"demo_{name}").is_file()


def test_set_wins_over_the_spec_and_the_stage_three_recipe(data, tmp_path):
    """``--set`` goes on top of a variant's config and of stage three's recipe (epochs 15) and of the spec's
    own finetune overrides (the shipped demo_table6_3's max_steps 10); it is recorded in the run's key."""
    from stbava.pipeline.experiment.runner import Context, run_key

    extra = {"train": {"epochs": 1, "max_steps": 1}, "encoder": {"seed": 0}}
    ctx = Context(data["cache"], data["data"], tmp_path, "test", "cpu", False, extra)
    tuned = load_spec(write_spec(tmp_path / "ft.yaml", {"base": BASE, "variants": [
        {"name": "tuned", "finetune": {"train.lr": 0.5}}]}))
    key = run_key(tuned, tuned.variants[0], 0, ctx)
    assert key["finetune_resolved"]["train"]["epochs"] == 1  # the recipe alone gives 15 (test above)
    assert key["finetune_resolved"]["train"]["lr"] == 0.5 and key["set"] == extra
    shipped = load_spec(ROOT / "configs/experiments/demo_table6_3.yaml")
    full = next(v for v in shipped.variants if v.name == "full")
    assert full.finetune["train"]["max_steps"] == 10
    resolved = run_key(shipped, full, 0, ctx)
    assert resolved["config"]["train"]["max_steps"] == resolved["finetune_resolved"]["train"]["max_steps"] == 1
    with pytest.raises(ConfigError, match="--seeds"):
        run_experiment(tuned.path, data["cache"], data["data"], tmp_path, seeds=(0,), device="cpu",
                       progress=False, extra={"train": {"seed": 3}})


def test_a_one_step_smoke_run_of_a_shipped_spec_and_another_set_is_not_reused(data, tmp_path):
    """The shipped demo_temporal spec (12 epochs of configs/demo.yaml) cut to one step per run by --set."""
    spec = ROOT / "configs/experiments/demo_temporal.yaml"
    args = ["experiment", str(spec), "--cache", str(data["cache"]), "--data-root", str(data["data"]), "--out",
            str(tmp_path / "S"), "--seeds", "0", "--device", "cpu", "--no-progress", "--set", f"frames={FRAMES}",
            "--set", "train.epochs=1"]
    res = CliRunner().invoke(main, [*args, "--set", "train.max_steps=1"], catch_exceptions=False)
    assert res.exit_code == 0 and "2 runs done, 0 refused, 0 failed" in res.output, res.output
    for name in ("full", "no_temporal"):
        run = tmp_path / "S" / "runs" / name / "seed0"
        assert json.loads((run / "train.json").read_text())["fusion"]["summary"]["steps"] == 1
        assert json.loads((run / "experiment.json").read_text())["config"]["train"]["epochs"] == 1  # not 12
    again = CliRunner().invoke(main, [*args, "--set", "train.max_steps=2"], catch_exceptions=False)
    assert again.exit_code == 1 and "0 runs done, 2 refused" in again.output
    results = json.loads((tmp_path / "S" / "results.json").read_text())
    assert "set.train.max_steps: 1 -> 2" in _row(results, "full")["refused"][0]["error"]
