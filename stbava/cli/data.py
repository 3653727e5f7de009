"""``stbava check-data`` and ``stbava synth``: the data commands."""

from __future__ import annotations

from pathlib import Path

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import progress_option, seed_option, verbosity_options


@main.command("check-data")
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="AVSBench subset folder (holding the metadata CSV) or the avsbench_data folder above it.")
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3", "avss"]))
@click.option("--frames", default=5, show_default=True, help="Frames per clip (AVSS: unused, 5 or 10 per part).")
@click.option("--workers", default=None, type=int, help="Decoding threads (default: CPU count, at most 8).")
@click.option("--avss-labels", default="v1s,v1m,v2", show_default=True,
              help="AVSS only: the label sets (parts) to check.")
@progress_option
@verbosity_options
def check_data_cmd(data_root: Path, subset: str, frames: int, workers: int | None, avss_labels: str,
                   progress: bool) -> None:
    """Open every frame, wav and mask; list what is missing or unreadable (exit 1 if anything is)."""
    from stbava.data.check import check_data

    with cli_errors():
        report = check_data(data_root, subset, frames=frames, workers=workers, progress=progress,
                            avss_parts=avss_labels)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problem(s) found in {report.root}")


@main.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3", "avss"]))
@click.option("--clips-per-split", default=8, show_default=True, help="Clips in each of train/val/test.")
@seed_option
@click.option("--frames", default=5, show_default=True, help="Frames (and seconds of audio) per clip.")
@click.option("--rules", default="temporal", show_default=True, type=click.Choice(["temporal", "independent"]),
              help="Who sounds when: 'temporal' (sources persist through drowned or paused seconds, or hand "
                   "over), 'independent' (a fresh sounding set every second).")
@progress_option
@verbosity_options
def synth_cmd(out: Path, subset: str, clips_per_split: int, seed: int | None, frames: int, rules: str,
              progress: bool) -> None:
    """Write a synthetic dataset in the AVSBench layout under OUT (see stbava/data/synthetic_audio.py)."""
    import time

    from stbava.data.synthetic import write_synthetic

    t0 = time.perf_counter()
    with cli_errors():
        if subset == "avss":  # parts fix the frames: v1s/v1m 5, v2 10
            from stbava.data.synthetic_avss import write_synthetic_avss

            root = write_synthetic_avss(out, clips_per_split, 0 if seed is None else seed, rules=rules)
        else:
            root = write_synthetic(out, subset, clips_per_split, 0 if seed is None else seed, frames=frames,
                                   rules=rules, progress=progress)
    click.echo(f"wrote {3 * clips_per_split} {subset} clips to {root} in {time.perf_counter() - t0:.1f} s "
               f"(use --data-root {root})")
