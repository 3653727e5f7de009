"""``stbava demo``: the whole pipeline on the embedded synthetic data."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main


@main.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Defaults to configs/demo.yaml.")
@click.option("--device", default="auto", show_default=True)
@click.option("--amp", default="off", show_default=True, type=click.Choice(["off", "bf16"]),
              help="bf16 autocast in every stage (CUDA; CPUs with native bf16, else refused); use another --out.")
def demo_cmd(out, config_path, device, amp):
    """Whole pipeline on the embedded synthetic data: synth, extract, train, evaluate, results table."""
    from stbava.pipeline.demo import results_table, run_demo

    with cli_errors():
        res = run_demo(out, config=config_path, device=device, amp=amp)
    click.echo(results_table(res["rows"]))
    t = res["timings"]
    click.echo(f"total {t['total_s']:.0f} s (extract {t['extract_s']:.0f} s, train full {t['train_full_s']:.0f} s, "
               f"train no-temporal {t['train_no_temporal_s']:.0f} s, eval {t['eval_s']:.0f} s)")
    click.echo(f"results: {out}/results.md; overlays: {res['overlays']}; figures: {', '.join(res['figures'])}")
