"""What ``stbava eval`` writes besides the report: predicted mask PNGs, overlay grids, similarity figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stbava.data.clips import Clip
from stbava.pipeline.core.net import Net
from stbava.pipeline.core.sources import Batch, CachedClips


def _mask_path(root: Path, clip: Clip, k: int) -> Path:
    """AVSBench GT naming with 1-based frame index (the published code wrote 0-based names, REFERENCE §10.12)."""
    parts = [clip.split] + ([clip.category] if clip.category else []) + [clip.id]
    return root.joinpath(*parts) / f"{clip.id}_{k + 1}.png"


class BatchWriter:
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
        img = item["image_embeddings"][None].to(device)
        aud = item["audio_embeddings"][None].to(device)
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
