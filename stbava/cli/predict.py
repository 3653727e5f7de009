"""``stbava predict``: a user's own video (or a folder of them)."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, out_dir_option, progress_option, verbosity_options
from stbava.cli.weights import weight_options, weight_search


@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(), help="best.pt or a run dir (read after every other "
              "option and the input are checked).")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True),
              help="A video file with an audio track, a folder of frames (one per second) plus a wav, or a folder "
                   "of videos: one output folder each, named by the file name without its extension (two videos "
                   "that differ only in extension, a.mp4 and a.mov, are refused: rename one). A folder is a folder "
                   "of videos when most of its media files are videos, else a folder of frames; a warning names "
                   "the files not used.")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None, help="Wav for a frames folder.")
@out_dir_option("masks/, the overlay video and summary.json go here, once an input has succeeded (a failed "
                "input leaves nothing).")
@click.option("--start", type=float, default=0.0, show_default=True,
              help="Seconds into the input to begin at (>= 0; from the earliest start of its video and audio).")
@click.option("--duration", type=float, default=None, help="Seconds to process from --start (> 0; default: to the "
              "end).")
@click.option("--temporal-stride", type=float, default=1.0, show_default=True,
              help="Seconds between masks (1/n: 1, 0.5, 0.2, ...); extra windows offset by it, each still sampling "
                   "frames 1 s apart. Costs 1/stride times the model time.")
@click.option("--max-side", type=int, default=None, help="Scale the overlay so its longer side is at most this "
              "many pixels, at least 2 (default: the input's resolution).")
@click.option("--gif", is_flag=True, help="Write overlay.gif (one frame per mask step, no sound) instead of overlay.mp4.")
@weight_options
@device_option
@progress_option
@verbosity_options
def predict_cmd(checkpoint, input_path, audio, out, start, duration, temporal_stride, max_side, gif, sam_checkpoint,
                vggish_checkpoint, vggish_pca, weights_dir, device, progress):
    """Segment the sounding objects of your own video and write an overlay video with its sound."""
    from stbava.pipeline.predict.run import PredictOptions, run_predict

    opts = PredictOptions(audio=audio, start=start, duration=duration, temporal_stride=temporal_stride,
                          max_side=max_side, video_name="overlay.gif" if gif else "overlay.mp4", progress=progress)
    with cli_errors():
        report = run_predict(checkpoint, input_path, out, device=device, options=opts,
                             search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
    for s in report["results"]:
        click.echo(f"{s['input']}: {s['seconds']} s in {s['windows']} window(s); masks: {s['masks']}; "
                   f"overlay: {s['overlay']}")
    if report["failed"]:
        lines = "; ".join(f"{f['input']} ({f['error']})" for f in report["failed"])
        raise click.ClickException(f"{len(report['failed'])} of {len(report['failed']) + len(report['results'])} "
                                   f"inputs failed: {lines}")
