"""``stbava eval``: checkpoint + split -> JSON report, optional mask PNGs, overlays and the similarity figure."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbava.checkpoint import atomic_write_text, check_compatible, file_digest, read_checkpoint
from stbava.config import Config
from stbava.data.clips import Clip, DataError, load_clips
from stbava.pipeline.distributed import dist_info, resolve_device
from stbava.pipeline.evaluate import EvalResult, evaluate_net, report_dict
from stbava.pipeline.net import Net
from stbava.pipeline.sources import Batch, CachedClips, RawClips, shuffled_partner

log = logging.getLogger(__name__)


def make_eval_dataset(payload: dict[str, Any], cfg: Config, clips: list[Clip], cache: str | Path | None,
                      shuffle_audio: bool = False):
    """Cached embeddings for stage-two checkpoints, raw frames for checkpoints with adapters."""
    if payload["kind"] == "adapters":
        from stbava.encoders.image import image_size

        partners = shuffled_partner(clips) if shuffle_audio else None
        return RawClips(clips, cfg.frames, image_size(cfg.encoder.name), audio_from=partners), None
    if cache is None:
        raise DataError("this checkpoint evaluates on cached embeddings: pass --cache (the stage-one store)")
    partners = shuffled_partner([c.id for c in clips]) if shuffle_audio else None
    ds = CachedClips(cache, clips, cfg.frames, audio_from=partners)
    check_compatible(payload, cfg, ds.fingerprint)
    return ds, ds.fingerprint


def _mask_path(root: Path, clip: Clip, k: int) -> Path:
    """AVSBench GT naming with 1-based frame index (the published code wrote 0-based names, REFERENCE §10.12)."""
    parts = [clip.split] + ([clip.category] if clip.category else []) + [clip.id]
    return root.joinpath(*parts) / f"{clip.id}_{k + 1}.png"


class _BatchWriter:
    """Saves predicted masks and overlay grids as batches stream out of evaluation."""

    def __init__(self, clips: dict[str, Clip], save_masks: Path | None, overlays_dir: Path | None, n_overlays: int):
        self.clips, self.save_masks, self.overlays_dir, self.left = clips, save_masks, overlays_dir, n_overlays

    def __call__(self, batch: Batch, logits: torch.Tensor) -> None:
        from stbava.data.io import read_frame
        from stbava.viz import save_mask_png, save_overlay_grid

        pred = (torch.sigmoid(logits) > 0.5).numpy().astype(np.uint8)
        for b, cid in enumerate(batch.clip_ids):
            clip = self.clips[cid]
            if self.save_masks is not None:
                for k in range(pred.shape[1]):
                    save_mask_png(pred[b, k], _mask_path(self.save_masks, clip, k))
            if self.overlays_dir is not None and self.left > 0:
                frames = np.stack([read_frame(p) for p in clip.frame_paths[: pred.shape[1]]])
                gt = batch.masks[b].cpu().numpy()
                gt_valid = batch.mask_valid[b].cpu().numpy()
                gt = np.where(gt_valid[:, None, None], gt, 0)
                save_overlay_grid(frames, gt, pred[b], self.overlays_dir / f"{cid}.png", title=cid)
                self.left -= 1


def save_similarity_figures(net: Net, ds: CachedClips, out_dir: Path, n: int, device: torch.device) -> list[str]:
    """Paper Fig 6.2: audio-visual cosine similarity per pixel before and after the ST-BAVA blocks."""
    from stbava.data.io import read_frame
    from stbava.viz import cosine_similarity_maps, save_similarity_figure

    model = net.model
    paths = []
    for i in range(min(n, len(ds))):
        item = ds[i]
        img = item["image"][None].to(device)
        aud = item["audio"][None].to(device)
        with torch.inference_mode():
            fo = model.fuse(img, aud)
        h, w = img.shape[-2:]
        before = cosine_similarity_maps(fo.V0[0], fo.A0[0].reshape(fo.A0.shape[1], -1), h, w)
        after = cosine_similarity_maps(fo.V[0], fo.A[0].reshape(fo.A.shape[1], -1), h, w)
        clip = ds.clips[i]
        frames = np.stack([read_frame(p) for p in clip.frame_paths[: img.shape[1]]])
        path = out_dir / f"similarity_{clip.id}.png"
        save_similarity_figure(frames, before, after, path, title=f"{clip.id}: audio-visual similarity")
        paths.append(str(path))
    return paths


def run_eval(checkpoint: str | Path, data_root: str | Path, split: str, out: str | Path | None, *,
             cache: str | Path | None = None, device: str = "auto", batch_size: int = 4,
             save_masks: str | Path | None = None, overlays: int = 0, figures: int = 0,
             shuffle_audio: bool = False, progress: bool = True) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate ``checkpoint`` on ``split``; write the JSON report to ``out`` (and artefacts beside it)."""
    from stbava.pipeline.restore import restore_net

    payload = read_checkpoint(checkpoint)
    dev = resolve_device(device)
    net, cfg = restore_net(payload, dev)
    clips = load_clips(data_root, cfg.subset, [split], frames=cfg.frames)
    if not clips:
        raise DataError(f"no clips in split {split!r} of {cfg.subset} under {data_root}")
    ds, fp = make_eval_dataset(payload, cfg, clips, cache, shuffle_audio)
    out_dir = Path(out).parent if out else Path(".")
    writer = None
    if save_masks or (overlays and dist_info().is_main):
        # every rank writes the masks of its own clips; overlays come from rank 0's clips only
        writer = _BatchWriter({c.id: c for c in clips}, Path(save_masks) if save_masks else None,
                              out_dir / "overlays" if overlays and dist_info().is_main else None, overlays)
    result = evaluate_net(net, ds, dev, batch_size=batch_size, amp=cfg.train.amp, progress=progress,
                          on_batch=writer)
    report = report_dict(result, subset=cfg.subset, split=split, shuffled_audio=shuffle_audio,
                         checkpoint=str(payload["path"]), checkpoint_digest=file_digest(payload["path"]),
                         checkpoint_kind=payload["kind"], cache=str(cache) if cache else None,
                         cache_fingerprint=fp, config=cfg.to_dict())
    if figures and isinstance(ds, CachedClips) and cfg.model.fusion and cfg.model.depth > 0 and dist_info().is_main:
        report["similarity_figures"] = save_similarity_figures(net, ds, out_dir, figures, dev)
    if out and dist_info().is_main:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return result, report
