"""``stbava train-fusion``, ``import-official`` and ``finetune-adapters``: stages two and three."""

from __future__ import annotations

from pathlib import Path

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import (
    device_option,
    out_dir_option,
    out_file_option,
    progress_option,
    seed_option,
    set_option,
    verbosity_options,
)
from stbava.cli.weights import weight_options, weight_search
from stbava.config import FUSIONS


def _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                     bidirectional, fusion, sets) -> dict:
    """CLI flags -> nested config overrides (only the flags actually given); ``sets`` (from --set) win."""
    from stbava.config import deep_update

    o: dict = {"train": {}, "model": {}}
    for key, val in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed),
                     ("max_steps", max_steps), ("num_workers", num_workers)):
        if val is not None:
            o["train"][key] = val
    for key, val in (("depth", depth), ("spatial_mode", spatial_mode), ("temporal", temporal),
                     ("bidirectional", bidirectional), ("fusion", fusion)):
        if val is not None:
            o["model"][key] = val
    return deep_update(o, sets)


def _echo_train_summary(summary: dict) -> None:
    from stbava.pipeline.core.distributed import dist_info

    if dist_info().is_main:  # under torchrun only rank 0 reports
        click.echo(f"done: {summary['steps']} steps, best val mIoU {summary['best_miou']:.4f}; "
                   f"best: {summary['best']}")


def train_options(f):
    """Options shared by train-fusion and finetune-adapters."""
    opts = [
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML overrides (configs/s4.yaml, configs/ms3.yaml, ...)."),
        out_dir_option("checkpoints, config.yaml and metrics.jsonl of the run.", alias="--run-dir", dest="run_dir"),
        click.option("--epochs", type=int, default=None), click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None), click.option("--depth", type=int, default=None),
        seed_option,
        click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps."),
        click.option("--num-workers", type=int, default=None, help="DataLoader workers."),
        click.option("--spatial-mode", type=click.Choice(["reference", "paper"]), default=None),
        click.option("--temporal/--no-temporal", default=None, help="Ablation: temporal attention."),
        click.option("--bidirectional/--no-bidirectional", default=None, help="Ablation: audio<-visual updates."),
        click.option("--fusion", type=click.Choice(FUSIONS), default=None,
                     help="Fusion module (thesis Table 6.2); none = decoder-only baseline. Default: the config's "
                          "(stbava)."),
        set_option, device_option,
        click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/last.pt."),
        progress_option, verbosity_options,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.command("train-fusion")
@click.option("--cache", required=True, type=click.Path(), help="Stage-one feature cache.")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False), help="AVSBench root (masks).")
@click.option("--subset", type=click.Choice(["s4", "ms3", "avss"]), default=None,
              help="Defaults to the config's subset (avss: 10 frames unless the config sets them).")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Where the cache's SAM checkpoint is now (decoder + PE start from it); by default its recorded "
                   "path. Its sha256 must be the cache's. A random-init cache gets a random decoder.")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Folder searched for the cache's SAM checkpoint by name (also: $STBAVA_WEIGHTS).")
@train_options
def train_fusion_cmd(cache, data_root, subset, sam_checkpoint, weights_dir, config_path, run_dir, epochs, batch_size,
                     lr, depth, seed, max_steps, num_workers, spatial_mode, temporal, bidirectional, fusion, sets,
                     device, resume, progress):
    """Stage two: train a fusion module (ST-BAVA by default) + SAM's mask decoder on cached embeddings (never
    runs an encoder)."""
    from stbava.cli.weights import weight_search
    from stbava.config import load_config
    from stbava.pipeline.train.stage2 import train_fusion

    with cli_errors():
        o = _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                             bidirectional, fusion, sets)
        if subset:
            o["subset"] = subset
            if subset == "avss" and "frames" not in o:
                o["frames"] = 10  # every AVSS clip is padded to 10 frames
        cfg = load_config(config_path, o)
        summary = train_fusion(cfg, cache, data_root, run_dir, device=device, resume=resume, progress=progress,
                               search=weight_search(sam_checkpoint, None, None, weights_dir))
    _echo_train_summary(summary)


@main.command("import-official")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@out_file_option("the stbava checkpoint to write.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None)
@click.option("--encoder", type=click.Choice(["vit_h", "vit_l", "vit_b", "tiny"]), default="vit_h", show_default=True)
@weight_options
@verbosity_options
def import_official_cmd(file, out, config_path, subset, encoder, sam_checkpoint, vggish_checkpoint, vggish_pca,
                        weights_dir):
    """Convert a published ST-BAVA Decoder.state_dict() (and its adapters) into a stbava checkpoint.

    The SAM and VGGish files the published model ran with are recorded (sha256): given by option, or the
    official files (sam_vit_h_4b8939.pth, vggish-10086976.pth) found in --weights-dir / $STBAVA_WEIGHTS.
    """
    from stbava.config import load_config
    from stbava.pipeline.train.official_import import import_official

    with cli_errors():
        o: dict = {"encoder": {"name": encoder}}
        if subset:
            o["subset"] = subset
        written = import_official(file, out, load_config(config_path, o),
                                  weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
    for p in written:
        click.echo(f"wrote {p}")

@main.command("finetune-adapters")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False), help="Raw frames + wav.")
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None, help="Must be the subset of --init.")
@click.option("--init", "init", required=True, type=click.Path(exists=True), help="Stage-two run dir or checkpoint.")
@weight_options
@click.option("--no-grad-checkpointing", is_flag=True, help="Keep encoder activations (more memory, faster).")
@click.option("--train-fusion/--freeze-fusion", default=None, help="Also train ST-BAVA (published: frozen).")
@train_options
def finetune_adapters_cmd(data_root, subset, init, sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir,
                          no_grad_checkpointing, train_fusion, config_path, run_dir, epochs, batch_size, lr, depth,
                          seed, max_steps, num_workers, spatial_mode, temporal, bidirectional, fusion, sets, device,
                          resume, progress):
    """Stage three: fine-tune audio adapters in the image encoder (+ mask decoder) from raw frames."""
    import yaml

    from stbava.pipeline.train.stage3 import finetune_adapters

    with cli_errors():
        o = _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                             bidirectional, fusion, sets)
        if config_path:
            from stbava.config import deep_update

            o = deep_update(yaml.safe_load(Path(config_path).read_text()) or {}, o)
        if no_grad_checkpointing:
            o["train"]["grad_checkpointing"] = False
        if train_fusion is not None:
            o["train"]["train_fusion"] = train_fusion
        if subset:
            o["subset"] = subset
        summary = finetune_adapters(init, data_root, run_dir, o, device=device, resume=resume, progress=progress,
                                    search=weight_search(sam_checkpoint, vggish_checkpoint, vggish_pca, weights_dir))
    _echo_train_summary(summary)
