"""The weight-file options shared by every command that runs (or records) the frozen encoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

WEIGHT_HELP = ("Looked for in this order: the option, the path recorded in the cache/checkpoint, a file of the "
               "recorded name in --weights-dir, then in $STBAVA_WEIGHTS; its sha256 must be the recorded one.")


def weight_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--sam-checkpoint``, ``--vggish-checkpoint``, ``--vggish-pca``, ``--weights-dir``."""
    opts = [
        click.option("--sam-checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="SAM or SAM 2 weights (e.g. sam_vit_h_4b8939.pth, sam2.1_hiera_large.pt). " + WEIGHT_HELP),
        click.option("--vggish-checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="VGGish weights (vggish-10086976.pth)."),
        click.option("--vggish-pca", type=click.Path(dir_okay=False), default=None,
                     help="VGGish PCA params (vggish_pca_params-970ea276.pth)."),
        click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder searched for weight files by name (also: $STBAVA_WEIGHTS)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def weight_search(sam_checkpoint: str | None, vggish_checkpoint: str | None, vggish_pca: str | None,
                  weights_dir: str | None) -> Any:
    """The :class:`~stbava.encoders.weights.WeightSearch` these options describe."""
    from stbava.encoders.weights import WeightSearch

    given = {"sam_checkpoint": sam_checkpoint, "vggish_checkpoint": vggish_checkpoint, "vggish_pca": vggish_pca}
    return WeightSearch(given={k: str(v) for k, v in given.items() if v}, weights_dir=weights_dir)
