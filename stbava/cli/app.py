"""``stbava app``: the local web app (Gradio, optional extra ``stbava[app]``)."""

from __future__ import annotations

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, verbosity_options
from stbava.cli.weights import weight_options, weight_search


@main.command("app")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="best.pt or a run dir.")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (127.0.0.1: this machine only).")
@click.option("--examples", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of videos offered as examples to pick.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Each request's outputs go to a new folder made inside it (default: a new temporary folder); "
                   "that folder is removed when the app closes.")
@weight_options
@device_option
@verbosity_options
def app_cmd(checkpoint, port, host, examples, work_dir, sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir,
            device):
    """Open a local web page: upload a video, watch its overlay with sound, download the masks."""
    from stbava.pipeline.predict.app import launch_app

    with cli_errors():
        launch_app(checkpoint, port=port, host=host, examples=examples, work_dir=work_dir, device=device,
                   search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
