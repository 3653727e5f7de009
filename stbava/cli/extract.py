"""``stbava extract-features``: stage one."""

from __future__ import annotations

from pathlib import Path

import click

from stbava.cli.group import cli_errors, main
from stbava.cli.options import device_option, progress_option, seed_option, verbosity_options
from stbava.config import SAM2_ENCODERS, SAM_ENCODERS


@main.command("extract-features")
@click.option("--data-root", required=True, type=click.Path(path_type=Path),
              help="AVSBench subset folder (holding the metadata CSV) or the avsbench_data folder above it.")
@click.option("--subset", required=True, type=click.Choice(["s4", "ms3", "avss"]))
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path),
              help="Store to create or resume: a .zarr directory or an .h5 file.")
@click.option("--backend", default="zarr", show_default=True, type=click.Choice(["zarr", "hdf5"]))
@click.option("--encoder", default="tiny", show_default=True, type=click.Choice([*SAM_ENCODERS, *SAM2_ENCODERS]),
              help="Image encoder: SAM's ViT, or SAM 2's Hiera (docs/sam2.md).")
@click.option("--sam-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Official SAM checkpoint (e.g. sam_vit_h_4b8939.pth) or SAM 2 checkpoint (e.g. "
                   "sam2.1_hiera_large.pt); random init when absent.")
@click.option("--high-res-features", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="SAM 2 only: also cache its two high-resolution levels (8 MiB per 1024-px frame; off: 2 MiB, "
                   "the decoder is built without them).")
@click.option("--vggish-checkpoint", type=click.Path(path_type=Path), default=None,
              help="torchvggish vggish-10086976.pth; random init when absent.")
@click.option("--vggish-pca", type=click.Path(path_type=Path), default=None, help="Optional VGGish PCA params.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Split to extract (repeatable); all splits when absent.")
@click.option("--batch-size", default=4, show_default=True,
              help="Clips decoded and written together; memory is set by --frames-per-forward, not by this.")
@click.option("--frames-per-forward", default=0, show_default=True,
              help="Frames per image-encoder forward; 0 = as many as fit in half the free memory. Measured peak "
                   "per frame on CPU (fp32): tiny 6 MiB, vit_b 1.75 GiB; vit_h about 2.4 GiB (estimate); SAM 2 Hiera "
                   "t / l about 0.5 GiB.")
@device_option
@click.option("--amp", default="off", show_default=True, type=click.Choice(["off", "bf16"]),
              help="bf16 autocast for the image encoder (CUDA; CPUs with native bf16, else refused).")
@click.option("--store-log-mel", is_flag=True, help="Also cache the [T,1,96,64] VGGish input examples.")
@seed_option
@click.option("--frames", default=5, show_default=True, help="Frames per clip (avss: always 10, padded).")
@click.option("--avss-labels", default="v1s,v1m,v2", show_default=True, help="AVSS only: the label sets to extract.")
@click.option("--num-workers", default=2, show_default=True, help="DataLoader workers decoding frames and wavs.")
@click.option("--codec", default=None, help="Codec of a new store (zarr: blosc-lz4|none|blosc-zstd|zstd; "
                                           "hdf5: none|lzf|gzip); backend default when absent.")
@progress_option
@click.option("--verify", is_flag=True, help="Read back every done clip first; re-extract those that no longer decode.")
@click.option("--sdpa/--no-sdpa", default=None,
              help="Fused SDPA attention in the image encoder (exact rel-pos bias); default: on. Recorded: a "
                   "resumed run must use the same setting (and --amp).")
@verbosity_options
def extract_features_cmd(data_root: Path, subset: str, cache_path: Path, backend: str, encoder: str,
                         sam_checkpoint: Path | None, vggish_checkpoint: Path | None, vggish_pca: Path | None,
                         splits: tuple[str, ...], batch_size: int, frames_per_forward: int, device: str, amp: str,
                         store_log_mel: bool,
                         seed: int | None, frames: int, num_workers: int, codec: str | None, progress: bool,
                         verify: bool, sdpa: bool | None, high_res_features: str, avss_labels: str) -> None:
    """Encode every clip once with the frozen SAM image encoder and VGGish into a feature cache (resumable)."""
    from stbava.config import EncoderConfig
    from stbava.pipeline.extract.features import run_extraction

    def opt(p: Path | None) -> str | None:
        return None if p is None else str(p)

    enc = EncoderConfig(name=encoder, sam_checkpoint=opt(sam_checkpoint), vggish_checkpoint=opt(vggish_checkpoint),
                        vggish_pca=opt(vggish_pca), seed=0 if seed is None else seed,
                        high_res_features=high_res_features == "on")
    with cli_errors():
        from stbava.config import validate_encoder

        validate_encoder(enc)
        s = run_extraction(data_root, subset, cache_path, backend, enc, splits=splits or None, batch_size=batch_size,
                           device=device, amp=amp, frames=frames, store_log_mel=store_log_mel,
                           progress=progress, num_workers=num_workers, codec=codec, verify=verify,
                           sdpa=sdpa, frames_per_forward=frames_per_forward, avss_parts=avss_labels)
    from stbava.pipeline.core.distributed import dist_info

    if dist_info().is_main:  # under torchrun every rank returns the job's totals; one line is enough
        click.echo(f"cache {s.cache} ({s.backend}, encoders {s.fingerprint}): {s.total} clips, wrote {s.written}, "
                   f"{s.skipped} already done; {s.seconds:.1f} s ({s.clips_per_s:.2f} clips/s) on {s.device}")
