"""``stbava plot``: training curves of one or more runs from their ``metrics.jsonl``."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import out_file_option, verbosity_options


@main.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@out_file_option("the PNG to write, e.g. curves.png.")
@verbosity_options
def plot_cmd(run_dirs, out):
    """Loss and validation mIoU / F per epoch, every RUN_DIR on one figure."""
    from stbava.pipeline.predict.plot import plot_runs

    with cli_errors():
        plot_runs(run_dirs, out)
    click.echo(f"{len(run_dirs)} run(s) -> {out}")
