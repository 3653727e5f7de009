"""``stbava predict``: a user's own video."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.weights import weight_options, weight_search


@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="best.pt or a run dir.")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True),
              help="A video file with an audio track, or a folder of frames (one per second) plus a wav.")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None, help="Wav for a frames folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="masks/ and the overlay video go here.")
@click.option("--gif", is_flag=True, help="Write overlay.gif instead of overlay.mp4.")
@weight_options
@click.option("--device", default="auto", show_default=True)
def predict_cmd(checkpoint, input_path, audio, out, gif, sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir,
                device):
    """Segment the sounding objects of your own video, one frame per second, and show them."""
    from stbava.pipeline.predict import run_predict

    with cli_errors():
        s = run_predict(checkpoint, input_path, out, audio=audio,
                        search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir), device=device,
                        video_name="overlay.gif" if gif else "overlay.mp4")
    click.echo(f"{s['seconds']} s in {s['windows']} window(s); masks: {s['masks']}; overlay: {s['overlay']}")
