"""``stbava demo``: the whole pipeline on the embedded synthetic data."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, out_dir_option, progress_option, seed_option, verbosity_options


@main.command("demo")
@out_dir_option("data, cache, runs, results.md and the pictures.", required=False, default="demo_out")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Defaults to configs/demo.yaml.")
@device_option
@click.option("--amp", default="off", show_default=True, type=click.Choice(["off", "bf16"]),
              help="bf16 autocast in every stage (CUDA; CPUs with native bf16, else refused); use another --out.")
@seed_option
@progress_option
@verbosity_options
def demo_cmd(out, config_path, device, amp, seed, progress):
    """Whole pipeline on the embedded synthetic data: synth, extract, train, evaluate, results table."""
    from stbava.pipeline.demo import results_table, run_demo

    with cli_errors():
        res = run_demo(out, config=config_path, device=device, amp=amp, seed=0 if seed is None else seed,
                       progress=progress)
    click.echo(results_table(res["rows"]))
    t = res["timings"]
    click.echo(f"total {t['total_s']:.0f} s (extract {t['extract_s']:.0f} s, train full {t['train_full_s']:.0f} s, "
               f"train no-temporal {t['train_no_temporal_s']:.0f} s, eval {t['eval_s']:.0f} s)")
    click.echo(f"results: {out}/results.md; overlays: {res['overlays']}; figures: {', '.join(res['figures'])}")
