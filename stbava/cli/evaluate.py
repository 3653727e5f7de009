"""``stbava eval``: AVSBench-exact scores of a checkpoint."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, out_file_option, progress_option, verbosity_options
from stbava.cli.weights import weight_options, weight_search


@main.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="best.pt / last.pt or a run dir.")
@click.option("--cache", type=click.Path(), default=None, help="Stage-one cache (stage-two checkpoints).")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--subset", type=click.Choice(["s4", "ms3", "avss"]), default=None, help="Checked against the checkpoint.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@out_file_option("the JSON report (optional).", required=False)
@click.option("--save-masks", type=click.Path(file_okay=False), default=None, help="Write predicted mask PNGs here.")
@click.option("--overlays", type=int, default=0, show_default=True, help="Frame|GT|prediction PNGs for N clips.")
@click.option("--figures", type=int, default=0, show_default=True, help="Similarity figures for N clips.")
@click.option("--shuffle-audio", is_flag=True, help="Control: feed each clip another clip's audio.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Clips per forward (metrics stay per clip).")
@click.option("--amp", type=click.Choice(["off", "bf16"]), default="off", show_default=True,
              help="bf16 autocast for the network (CUDA; CPUs with native bf16); metrics are always computed on float32 logits.")
@weight_options
@device_option
@progress_option
@verbosity_options
def eval_cmd(checkpoint, cache, data_root, subset, split, out, save_masks, overlays, figures, shuffle_audio,
             batch_size, amp, sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir, device, progress):
    """Score a checkpoint with AVSBench's exact mIoU and F-score."""
    from stbava.checkpoint import checkpoint_config, read_checkpoint
    from stbava.pipeline.evaluate.loop import run_eval

    with cli_errors():
        if subset and checkpoint_config(read_checkpoint(checkpoint)).subset != subset:
            raise click.ClickException(f"{checkpoint} was trained on another subset than {subset}")
        result, report = run_eval(checkpoint, data_root, split, out, cache=cache, device=device,
                                  batch_size=batch_size, save_masks=save_masks, overlays=overlays,
                                  figures=figures, shuffle_audio=shuffle_audio, amp=amp, progress=progress,
                                  search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
    click.echo(f"{'subset':<8}{'split':<7}{'clips':>6}{'mIoU':>9}{'F-score':>9}")
    click.echo(f"{report['subset']:<8}{split:<7}{result.n_clips:>6}{result.miou:>9.4f}{result.fscore:>9.4f}")
    if out:
        click.echo(f"report: {out}")
