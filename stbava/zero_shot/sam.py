"""Zero-shot SAM with ground-truth prompts on cached image embeddings (thesis §6.3, Table 6.2 top rows).

Vanilla SAM's own prompt encoder and mask decoder (``segment_anything``, with the SAM checkpoint's
``prompt_encoder.*`` / ``mask_decoder.*`` weights) run on the stage-one cache, one frame at a time, prompted
with points or boxes from that frame's ground-truth mask (:func:`stbava.zero_shot.prompts_from_mask`):

- ``point1`` / ``point3``: the points of the 1 / 3 largest regions, all positive, as *one* prompt set (SAM's
  multi-point prompt, ``SamPredictor.predict(point_coords=[k,2])``).
- ``box1`` / ``box3``: one prompt set per box (SAM takes one box per prompt set), each giving one mask;
  the frame's logits are their pixel-wise maximum, i.e. the union of the masks at any threshold.
- Every prompt set uses multimask output and keeps the mask with the highest predicted IoU. Its low-res
  logits are resized like ``AVSModel.upsample`` (bilinear to the encoder input side, then to 224).
- Prompt coordinates go from the 224x224 mask (the whole frame, squashed) to the frame and then to the encoder
  input as SAM's ``ResizeLongestSide`` maps them (stbava frames are resized so that the longest side equals the
  encoder's img_size, and padded bottom/right). The logits are cut back to the frame's un-padded area before
  the resize to 224, as ``Sam.postprocess_masks`` does; for square frames both steps change nothing.
- An empty mask gives no prompt and an empty prediction (all logits :data:`EMPTY_LOGIT`).

Without real SAM weights the decoder is random (seeded): such numbers only test the plumbing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty
from stbava.data.transforms import sam_resize_shape
from stbava.model.avs_model import upsample_logits
from stbava.state_dict import load_strict, strip_prefix
from stbava.zero_shot.prompts import map_boxes_to_input, map_coords_to_input, prompts_from_mask

PROMPTS = {"point1": ("point", 1), "point3": ("point", 3), "box1": ("box", 1), "box3": ("box", 3)}
EMPTY_LOGIT = -1.0e4  # sigmoid = 0: an empty mask at every threshold of the metrics


class ZeroShotSAM(nn.Module):
    """SAM's prompt encoder + mask decoder for a ``grid`` x ``grid`` embedding of an ``img_size`` input.

    Args:
        grid: side of the cached embedding grid (64 for SAM ViTs, 16 for ``tiny``).
        img_size: the encoder's input side (1024 / 256).
        mask_size: side of the returned logits (224).
    """

    def __init__(self, *, grid: int, img_size: int, mask_size: int = 224) -> None:
        super().__init__()
        sam = thirdparty.sam_modeling()
        self.grid, self.img_size, self.mask_size = grid, img_size, mask_size
        self.prompt_encoder = sam.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                                input_image_size=(img_size, img_size), mask_in_chans=16)
        self.mask_decoder = sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        )

    def load_sam(self, sam_state: dict[str, torch.Tensor], source: str) -> None:
        """Take ``prompt_encoder.*`` and ``mask_decoder.*`` from a full SAM state dict, strictly."""
        for part in ("prompt_encoder", "mask_decoder"):
            load_strict(getattr(self, part), strip_prefix(sam_state, f"{part}."), f"{part}.* of {source}",
                        hint="pass an official SAM checkpoint (sam_vit_*.pth)")

    def _decode(self, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None,
                boxes: torch.Tensor | None, valid_hw: tuple[int, int]) -> torch.Tensor:
        """N prompt sets on one frame -> the best of the 3 masks per set, ``[N,mask,mask]`` logits.

        ``valid_hw``: the resized frame's ``(h, w)`` inside the padded img_size square (the area kept)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou = self.mask_decoder(image_embeddings=embedding[None], image_pe=self.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=True)
        best = iou.argmax(dim=1)  # [N]
        chosen = low_res[torch.arange(len(best)), best][:, None]  # [N,1,4g,4g]
        if valid_hw == (self.img_size, self.img_size):  # a square frame: no padding to cut
            return upsample_logits(chosen, self.img_size, self.mask_size)
        x = F.interpolate(chosen, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x[..., :valid_hw[0], :valid_hw[1]]  # drop the padding, as Sam.postprocess_masks does
        return F.interpolate(x, (self.mask_size, self.mask_size), mode="bilinear", align_corners=False)[:, 0]

    @torch.inference_mode()
    def frame_logits(self, embedding: torch.Tensor, mask: np.ndarray, prompt: str, seed: int,
                     frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``[mask_size,mask_size]`` (float32) of one frame prompted from its ground-truth mask.

        Args:
            embedding: ``[256,g,g]`` the frame's cached SAM embedding (any float dtype).
            mask: ``[H,W]`` ground-truth mask (224x224 in AVSBench).
            prompt: a key of :data:`PROMPTS`.
            seed: seeds the random point of a region whose centre of mass is off it.
            frame_hw: ``(H, W)`` of the original frame the embedding was made from; None = the mask's size.
        """
        kind, n = PROMPTS[prompt]
        found = prompts_from_mask(mask, kind, n, seed)
        if len(found) == 0:
            return torch.full((self.mask_size, self.mask_size), EMPTY_LOGIT)
        param = self.mask_decoder.iou_token.weight
        emb = embedding.to(param)
        frame_hw = frame_hw or mask.shape
        valid_hw = sam_resize_shape(*frame_hw, self.img_size)
        if kind == "point":
            coords = torch.as_tensor(map_coords_to_input(found, mask.shape, self.img_size, frame_hw)).to(param)[None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=param.device)
            logits = self._decode(emb, (coords, labels), None, valid_hw)
        else:
            boxes = torch.as_tensor(map_boxes_to_input(found, mask.shape, self.img_size, frame_hw)).to(param)
            logits = self._decode(emb, None, boxes, valid_hw)
        return logits.amax(dim=0).float().cpu()


def frame_seed(seed: int, clip_id: str, frame: int) -> int:
    """A per-frame seed that depends only on (seed, clip, frame), not on the order frames are visited."""
    return zlib.crc32(f"{seed}:{clip_id}:{frame}".encode())


def build_zero_shot_sam(sam_checkpoint: str | Path | None, *, grid: int, img_size: int,
                        seed: int) -> tuple[ZeroShotSAM, str]:
    """The prompt encoder + decoder from a SAM checkpoint, or random-initialised from ``seed``.

    Returns:
        ``(model in eval mode, description of its weights for the report)``.
    """
    from stbava.digest import file_sha256
    from stbava.encoders.checkpoints import load_state_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZeroShotSAM(grid=grid, img_size=img_size)
    if sam_checkpoint is None:
        return model.eval(), f"random-init seed={seed} (no SAM checkpoint: numbers test the plumbing only)"
    model.load_sam(load_state_file(sam_checkpoint, "sam"), str(sam_checkpoint))
    return model.eval(), f"{sam_checkpoint} sha256={file_sha256(sam_checkpoint)}"
