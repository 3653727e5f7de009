"""The ``stbava`` command: a thin click layer over library functions (parse -> config -> one call)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import click

from stbava.config import ConfigError
from stbava.data.clips import DataError


def _known_errors() -> tuple[type[BaseException], ...]:
    from stbava.checkpoint import CheckpointFormatError

    errs: list[type[BaseException]] = [DataError, ConfigError, CheckpointFormatError]
    with contextlib.suppress(ImportError):
        from stbava.encoders.checkpoints import CheckpointError

        errs.append(CheckpointError)
    with contextlib.suppress(ImportError):
        from stbava.cache import CacheError

        errs.append(CacheError)
    return tuple(errs)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Known user-facing errors become a one-line message and exit code 1, without a traceback."""
    try:
        yield
    except _known_errors() as e:  # noqa: BLE001 - a fixed tuple of our own error types
        raise click.ClickException(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="stbava")
def main(verbose: bool) -> None:
    """SAM + ST-BAVA audio-visual segmentation: extract once, train fast, evaluate exactly."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# >>> data commands
@main.command("check-data")
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="AVSBench subset folder (holding the metadata CSV) or the avsbench_data folder above it.")
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3"]))
@click.option("--frames", default=5, show_default=True, help="Frames per clip.")
@click.option("--workers", default=None, type=int, help="Decoding threads (default: CPU count, at most 8).")
def check_data_cmd(data_root: Path, subset: str, frames: int, workers: int | None) -> None:
    """Open every frame, wav and mask; list what is missing or unreadable (exit 1 if anything is)."""
    from stbava.data.check import check_data

    with cli_errors():
        report = check_data(data_root, subset, frames=frames, workers=workers)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problem(s) found in {report.root}")


@main.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3"]))
@click.option("--clips-per-split", default=8, show_default=True, help="Clips in each of train/val/test.")
@click.option("--seed", default=0, show_default=True)
@click.option("--frames", default=5, show_default=True, help="Frames (and seconds of audio) per clip.")
def synth_cmd(out: Path, subset: str, clips_per_split: int, seed: int, frames: int) -> None:
    """Write a synthetic dataset in the AVSBench layout under OUT (objects whose sounds switch on/off)."""
    import time

    from stbava.data.synthetic import write_synthetic

    t0 = time.perf_counter()
    with cli_errors():
        root = write_synthetic(out, subset, clips_per_split, seed, frames=frames)
    click.echo(f"wrote {3 * clips_per_split} {subset} clips to {root} in {time.perf_counter() - t0:.1f} s "
               f"(use --data-root {root})")
# <<< data commands

# >>> extract commands
@main.command("extract-features")
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="AVSBench subset folder (holding the metadata CSV) or the avsbench_data folder above it.")
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3"]))
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path),
              help="Store to create or resume: a .zarr directory or an .h5 file.")
@click.option("--backend", default="zarr", show_default=True, type=click.Choice(["zarr", "hdf5"]))
@click.option("--encoder", default="tiny", show_default=True, type=click.Choice(["vit_h", "vit_l", "vit_b", "tiny"]),
              help="SAM image encoder.")
@click.option("--sam-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Official SAM checkpoint (e.g. sam_vit_h_4b8939.pth); random init when absent.")
@click.option("--vggish-checkpoint", type=click.Path(path_type=Path), default=None,
              help="torchvggish vggish-10086976.pth; random init when absent.")
@click.option("--vggish-pca", type=click.Path(path_type=Path), default=None, help="Optional VGGish PCA params.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Split to extract (repeatable); all splits when absent.")
@click.option("--batch-size", default=4, show_default=True,
              help="Clips per encoder forward (x frames images; vit_h fp32 peaks near 1 GiB per image).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--amp", default="off", show_default=True, type=click.Choice(["off", "bf16"]),
              help="bf16 autocast for the image encoder (CUDA only).")
@click.option("--store-log-mel", is_flag=True, help="Also cache the [T,1,96,64] VGGish input examples.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random encoder init (no checkpoint).")
@click.option("--frames", default=5, show_default=True, help="Frames per clip.")
@click.option("--num-workers", default=2, show_default=True, help="DataLoader workers decoding frames and wavs.")
@click.option("--codec", default=None, help="Codec of a new store (zarr: blosc-lz4|none|blosc-zstd|zstd; "
                                           "hdf5: none|lzf|gzip); backend default when absent.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verify", is_flag=True, help="Read back every done clip first; re-extract those that no longer decode.")
@click.option("--sdpa/--no-sdpa", default=None,
              help="Fused SDPA attention in the image encoder (exact rel-pos bias); default: on.")
def extract_features_cmd(data_root: Path, subset: str, cache_path: Path, backend: str, encoder: str,
                         sam_checkpoint: Path | None, vggish_checkpoint: Path | None, vggish_pca: Path | None,
                         splits: tuple[str, ...], batch_size: int, device: str, amp: str, store_log_mel: bool,
                         seed: int, frames: int, num_workers: int, codec: str | None, no_progress: bool,
                         verify: bool, sdpa: bool | None) -> None:
    """Encode every clip once with the frozen SAM image encoder and VGGish into a feature cache (resumable)."""
    from stbava.config import EncoderConfig
    from stbava.pipeline.extract import run_extraction

    def opt(p: Path | None) -> str | None:
        return None if p is None else str(p)

    enc = EncoderConfig(name=encoder, sam_checkpoint=opt(sam_checkpoint), vggish_checkpoint=opt(vggish_checkpoint),
                        vggish_pca=opt(vggish_pca), seed=seed)
    with cli_errors():
        s = run_extraction(data_root, subset, cache_path, backend, enc, splits=splits or None, batch_size=batch_size,
                           device=device, amp=amp, frames=frames, store_log_mel=store_log_mel,
                           progress=not no_progress, num_workers=num_workers, codec=codec, verify=verify,
                           sdpa=sdpa)
    from stbava.pipeline.distributed import dist_info

    if dist_info().is_main:  # under torchrun every rank returns the job's totals; one line is enough
        click.echo(f"cache {s.cache} ({s.backend}, encoders {s.fingerprint}): {s.total} clips, wrote {s.written}, "
                   f"{s.skipped} already done; {s.seconds:.1f} s ({s.clips_per_s:.2f} clips/s) on {s.device}")
# <<< extract commands

# >>> train commands
def _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                     bidirectional, fusion, sets) -> dict:
    """CLI flags -> nested config overrides (only the flags actually given)."""
    from stbava.config import deep_update, parse_override

    o: dict = {"train": {}, "model": {}}
    for key, val in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed),
                     ("max_steps", max_steps), ("num_workers", num_workers)):
        if val is not None:
            o["train"][key] = val
    for key, val in (("depth", depth), ("spatial_mode", spatial_mode), ("temporal", temporal),
                     ("bidirectional", bidirectional), ("fusion", fusion)):
        if val is not None:
            o["model"][key] = val
    for s in sets:
        deep_update(o, parse_override(s))
    return o


def _echo_train_summary(summary: dict) -> None:
    from stbava.pipeline.distributed import dist_info

    if dist_info().is_main:  # under torchrun only rank 0 reports
        click.echo(f"done: {summary['steps']} steps, best val mIoU {summary['best_miou']:.4f}; "
                   f"best: {summary['best']}")


def train_options(f):
    """Options shared by train-fusion and finetune-adapters."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML overrides (configs/s4.yaml, configs/ms3.yaml, ...)."),
        click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Checkpoints + metrics go here."),
        click.option("--epochs", type=int, default=None), click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None), click.option("--depth", type=int, default=None),
        click.option("--seed", type=int, default=None),
        click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps."),
        click.option("--num-workers", type=int, default=None, help="DataLoader workers."),
        click.option("--spatial-mode", type=click.Choice(["reference", "paper"]), default=None),
        click.option("--temporal/--no-temporal", default=None, help="Ablation: temporal attention."),
        click.option("--bidirectional/--no-bidirectional", default=None, help="Ablation: audio<-visual updates."),
        click.option("--fusion/--no-fusion", default=None, help="Ablation: --no-fusion = decoder-only baseline."),
        click.option("--set", "sets", multiple=True, help="Any config field, e.g. --set train.amp=off."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from RUN_DIR/last.pt."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@main.command("train-fusion")
@click.option("--cache", required=True, type=click.Path(), help="Stage-one feature cache.")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False), help="AVSBench root (masks).")
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None, help="Defaults to the config's subset.")
@click.option("--sam-checkpoint", type=click.Path(), default=None, help="Initialise decoder + PE from SAM weights.")
@train_options
def train_fusion_cmd(cache, data_root, subset, sam_checkpoint, config_path, run_dir, epochs, batch_size, lr, depth,
                     seed, max_steps, num_workers, spatial_mode, temporal, bidirectional, fusion, sets, device,
                     resume):
    """Stage two: train ST-BAVA + SAM's mask decoder on cached embeddings (never runs an encoder)."""
    from stbava.config import load_config
    from stbava.pipeline.fusion import train_fusion

    with cli_errors():
        o = _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                             bidirectional, fusion, sets)
        if subset:
            o["subset"] = subset
        if sam_checkpoint:
            o.setdefault("encoder", {})["sam_checkpoint"] = sam_checkpoint
        cfg = load_config(config_path, o)
        summary = train_fusion(cfg, cache, data_root, run_dir, device=device, resume=resume)
    _echo_train_summary(summary)


@main.command("import-official")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="stbava checkpoint to write.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None)
@click.option("--encoder", type=click.Choice(["vit_h", "vit_l", "vit_b", "tiny"]), default="vit_h", show_default=True)
@click.option("--sam-checkpoint", type=click.Path(), default=None, help="Recorded for stage-three use.")
def import_official_cmd(file, out, config_path, subset, encoder, sam_checkpoint):
    """Convert a published ST-BAVA Decoder.state_dict() (and its adapters) into a stbava checkpoint."""
    from stbava.config import load_config
    from stbava.pipeline.official_import import import_official

    with cli_errors():
        o: dict = {"encoder": {"name": encoder}}
        if subset:
            o["subset"] = subset
        if sam_checkpoint:
            o["encoder"]["sam_checkpoint"] = sam_checkpoint
        written = import_official(file, out, load_config(config_path, o))
    for p in written:
        click.echo(f"wrote {p}")

@main.command("finetune-adapters")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False), help="Raw frames + wav.")
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None, help="Checked against --init.")
@click.option("--init", "init", required=True, type=click.Path(exists=True), help="Stage-two run dir or checkpoint.")
@click.option("--sam-checkpoint", type=click.Path(), default=None, help="The SAM weights used at extraction.")
@click.option("--vggish-checkpoint", type=click.Path(), default=None, help="The VGGish weights used at extraction.")
@click.option("--no-grad-checkpointing", is_flag=True, help="Keep encoder activations (more memory, faster).")
@click.option("--train-fusion/--freeze-fusion", default=None, help="Also train ST-BAVA (published: frozen).")
@train_options
def finetune_adapters_cmd(data_root, subset, init, sam_checkpoint, vggish_checkpoint, no_grad_checkpointing,
                          train_fusion, config_path, run_dir, epochs, batch_size, lr, depth, seed, max_steps,
                          num_workers, spatial_mode, temporal, bidirectional, fusion, sets, device, resume):
    """Stage three: fine-tune audio adapters in the image encoder (+ mask decoder) from raw frames."""
    import yaml

    from stbava.pipeline.adapters_stage import finetune_adapters

    with cli_errors():
        o = _train_overrides(epochs, batch_size, lr, depth, seed, max_steps, num_workers, spatial_mode, temporal,
                             bidirectional, fusion, sets)
        if config_path:
            from stbava.config import deep_update

            o = deep_update(yaml.safe_load(Path(config_path).read_text()) or {}, o)
        enc = o.setdefault("encoder", {})
        if sam_checkpoint:
            enc["sam_checkpoint"] = sam_checkpoint
        if vggish_checkpoint:
            enc["vggish_checkpoint"] = vggish_checkpoint
        if no_grad_checkpointing:
            o["train"]["grad_checkpointing"] = False
        if train_fusion is not None:
            o["train"]["train_fusion"] = train_fusion
        if subset:
            o["subset"] = subset
        summary = finetune_adapters(init, data_root, run_dir, o, device=device, resume=resume)
    _echo_train_summary(summary)
# <<< train commands

# >>> eval commands
@main.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="best.pt / last.pt or a run dir.")
@click.option("--cache", type=click.Path(), default=None, help="Stage-one cache (stage-two checkpoints).")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--subset", type=click.Choice(["s4", "ms3"]), default=None, help="Checked against the checkpoint.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON report path.")
@click.option("--save-masks", type=click.Path(file_okay=False), default=None, help="Write predicted mask PNGs here.")
@click.option("--overlays", type=int, default=0, show_default=True, help="Frame|GT|prediction PNGs for N clips.")
@click.option("--figures", type=int, default=0, show_default=True, help="Similarity figures for N clips.")
@click.option("--shuffle-audio", is_flag=True, help="Control: feed each clip another clip's audio.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Clips per forward (metrics stay per clip).")
@click.option("--device", default="auto", show_default=True)
def eval_cmd(checkpoint, cache, data_root, subset, split, out, save_masks, overlays, figures, shuffle_audio,
             batch_size, device):
    """Score a checkpoint with AVSBench's exact mIoU and F-score."""
    from stbava.checkpoint import checkpoint_config, read_checkpoint
    from stbava.pipeline.run_eval import run_eval

    with cli_errors():
        if subset and checkpoint_config(read_checkpoint(checkpoint)).subset != subset:
            raise click.ClickException(f"{checkpoint} was trained on another subset than {subset}")
        result, report = run_eval(checkpoint, data_root, split, out, cache=cache, device=device,
                                  batch_size=batch_size, save_masks=save_masks, overlays=overlays,
                                  figures=figures, shuffle_audio=shuffle_audio)
    click.echo(f"{'subset':<8}{'split':<7}{'clips':>6}{'mIoU':>9}{'F-score':>9}")
    click.echo(f"{report['subset']:<8}{split:<7}{result.n_clips:>6}{result.miou:>9.4f}{result.fscore:>9.4f}")
    if out:
        click.echo(f"report: {out}")
# <<< eval commands

# >>> predict commands
@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="best.pt or a run dir.")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True),
              help="A video file with an audio track, or a folder of frames (one per second) plus a wav.")
@click.option("--audio", type=click.Path(exists=True, dir_okay=False), default=None, help="Wav for a frames folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="masks/ and the overlay video go here.")
@click.option("--gif", is_flag=True, help="Write overlay.gif instead of overlay.mp4.")
@click.option("--sam-checkpoint", type=click.Path(), default=None, help="Override the SAM weights path.")
@click.option("--vggish-checkpoint", type=click.Path(), default=None, help="Override the VGGish weights path.")
@click.option("--device", default="auto", show_default=True)
def predict_cmd(checkpoint, input_path, audio, out, gif, sam_checkpoint, vggish_checkpoint, device):
    """Segment the sounding objects of your own video, one frame per second, and show them."""
    from stbava.pipeline.predict import run_predict

    with cli_errors():
        s = run_predict(checkpoint, input_path, out, audio=audio, sam_checkpoint=sam_checkpoint,
                        vggish_checkpoint=vggish_checkpoint, device=device,
                        video_name="overlay.gif" if gif else "overlay.mp4")
    click.echo(f"{s['seconds']} s in {s['windows']} window(s); masks: {s['masks']}; overlay: {s['overlay']}")
# <<< predict commands

# >>> demo commands
@main.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Defaults to configs/demo.yaml.")
@click.option("--device", default="auto", show_default=True)
def demo_cmd(out, config_path, device):
    """Whole pipeline on the embedded synthetic data: synth, extract, train, evaluate, results table."""
    from stbava.pipeline.demo import results_table, run_demo

    with cli_errors():
        res = run_demo(out, config=config_path, device=device)
    click.echo(results_table(res["rows"]))
    t = res["timings"]
    click.echo(f"total {t['total_s']:.0f} s (extract {t['extract_s']:.0f} s, train full {t['train_full_s']:.0f} s, "
               f"train no-temporal {t['train_no_temporal_s']:.0f} s, eval {t['eval_s']:.0f} s)")
    click.echo(f"results: {out}/results.md; overlays: {res['overlays']}; figures: {', '.join(res['figures'])}")
# <<< demo commands

_ = Path  # Path is used by the commands added between the markers
