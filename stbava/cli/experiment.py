"""``stbava experiment``: a spec's variants x seeds on one cache -> results.json, results.md (+ sweep plot)."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, out_dir_option, progress_option, set_option, verbosity_options
from stbava.cli.weights import weight_options, weight_search


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"seeds must be comma-separated integers, got {text!r}") from None


@main.command("experiment")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--cache", required=True, type=click.Path(exists=True), help="Stage-one cache every run trains on.")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="AVSBench root (masks; raw frames for stage-three variants).")
@out_dir_option("runs go to OUT/runs/<variant>/seed<k>/, tables to OUT/results.{json,md}.")
@click.option("--seeds", default="0,1,2", show_default=True, help="train.seed values, comma-separated.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@weight_options
@device_option
@progress_option
@click.option("--rerun-changed", is_flag=True,
              help="Delete and retrain runs whose folder was made from other inputs (config, stage-three recipe, "
                   "cache encoders or clips, data); without it such runs are refused and named.")
@set_option
@verbosity_options
def experiment_cmd(spec, cache, data_root, out, seeds, split, sam_checkpoint, vggish_checkpoint, vggish_pca,
                   weights_dir, device, progress, rerun_changed, sets):
    """Train every variant of SPEC (configs/experiments/*.yaml) for every seed, evaluate, tabulate.

    Re-running continues: a finished run is skipped only if it was made from the same inputs (resolved
    config and stage-three recipe, the cache's encoders and clips, the data's metadata csv, the split);
    interrupted ones resume from last.pt; failed ones are retried. A run refused by its config, cache or data
    is a row marked refused with the reason; a bug is marked failed, its traceback in the log.
    """
    from stbava.pipeline.experiment.runner import run_experiment

    with cli_errors():
        results = run_experiment(spec, cache, data_root, out, seeds=parse_seeds(seeds), split=split,
                                 device=device, progress=progress, rerun_changed=rerun_changed, extra=sets,
                                 search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
    failed = sum(len(r["failed"]) for r in results["variants"])
    refused = sum(len(r["refused"]) for r in results["variants"])
    done = sum(r["seeds_done"] for r in results["variants"])
    click.echo(f"{done} runs done, {refused} refused, {failed} failed; table: {out}/results.md")
    if failed or refused:
        raise SystemExit(1)
