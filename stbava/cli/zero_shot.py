"""``stbava zero-shot``: vanilla SAM prompted from ground-truth masks (thesis Table 6.2 top rows)."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, out_file_option, progress_option, seed_option, verbosity_options


@main.command("zero-shot")
@click.option("--cache", required=True, type=click.Path(exists=True), help="Stage-one cache (image embeddings).")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="AVSBench root (masks).")
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3"]))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--prompt", required=True, type=click.Choice(["point1", "point3", "box1", "box3"]),
              help="Points (one prompt set) or boxes (one set each) of the 1 or 3 largest GT regions.")
@click.option("--sam-checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Official SAM weights (prompt_encoder.*, mask_decoder.*); without it: random init from --seed.")
@out_file_option("the JSON report, eval's keys (optional).", required=False)
@seed_option
@device_option
@progress_option
@verbosity_options
def zero_shot_cmd(cache, data_root, subset, split, prompt, sam_checkpoint, out, seed, device, progress):
    """Score SAM's own decoder on cached embeddings, prompted from each frame's GT mask (eval's metrics).

    An empty GT mask gets no prompt and an empty prediction (IoU 1); the report also gives mIoU / F over the
    frames with a non-empty GT only (*_nonempty_gt). Non-square frames are prompted through their real resize.
    """
    from stbava.zero_shot.run import run_zero_shot

    with cli_errors():
        result, report = run_zero_shot(cache, data_root, subset, split, prompt, sam_checkpoint=sam_checkpoint,
                                       out=out, seed=0 if seed is None else seed, device=device,
                                       progress=progress)
    click.echo(f"{'subset':<8}{'split':<7}{'prompt':<8}{'clips':>6}{'mIoU':>9}{'F-score':>9}")
    click.echo(f"{subset:<8}{split:<7}{prompt:<8}{result.n_clips:>6}{result.miou:>9.4f}{result.fscore:>9.4f}")
    click.echo(_nonempty_line(report))
    click.echo(f"SAM weights: {report['sam_weights']}")
    if out:
        click.echo(f"report: {out}")


def _nonempty_line(report: dict) -> str:
    """The scores over frames with a non-empty GT (an empty GT is predicted empty: IoU 1 for free)."""
    ne, nf = report["miou_nonempty_gt"], report["fscore_nonempty_gt"]
    head = (f"frames with a non-empty ground truth: {report['frames_nonempty_gt']} of {report['frames_scored']} "
            f"({report['clips_nonempty_gt']} clips)")
    return head + ("" if ne is None else f", mIoU {ne:.4f}, F-score {nf:.4f}")
