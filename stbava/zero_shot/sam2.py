"""Zero-shot SAM 2 with ground-truth prompts on a SAM 2 cache: SAM 2's own prompt encoder and mask decoder.

The same prompts as zero-shot SAM (:mod:`stbava.zero_shot.sam`: ``point1`` / ``point3`` one prompt set,
``box1`` / ``box3`` one set per box, union of their masks), passed the way ``SAM2ImagePredictor.predict`` passes
them: a box is two corner points with labels 2 and 3, points and box corners go through
``sam_prompt_encoder(points=..., boxes=None)`` (which appends its padding point), and the decoder gets the cached
high-resolution levels. Multimask output, the mask with the highest predicted IoU; its low-res logits are resized
like ``AVSModel.upsample`` (to the encoder input side, then to 224). SAM 2 squashes the whole frame to its
square input, so a mask coordinate maps to the input by ``S / 224`` on both axes (no padding to cut).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stbava import thirdparty
from stbava.feature_levels import unpack_levels
from stbava.model.avs_model import upsample_logits
from stbava.state_dict import load_strict, strip_prefix
from stbava.zero_shot.prompts import prompts_from_mask
from stbava.zero_shot.sam import EMPTY_LOGIT, PROMPTS


class ZeroShotSAM2(nn.Module):
    """SAM 2's prompt encoder + mask decoder (hyperparameters of ``SAM2Base._build_sam_heads``).

    Args:
        grid, img_size: embedding grid and square input side of the cache's encoder.
        high_res: the cache holds the two high-resolution levels (the decoder uses them, as SAM 2 does).
        decoder_flags: the encoder config's decoder flags (``pred_obj_scores``, ...).
    """

    def __init__(self, *, grid: int, img_size: int, high_res: bool, decoder_flags: dict[str, bool],
                 mask_size: int = 224) -> None:
        super().__init__()
        from stbava.model.sam2_decoder import build_sam2_decoder

        prompt = thirdparty.sam2_module("modeling.sam.prompt_encoder")
        self.grid, self.img_size, self.mask_size, self.high_res = grid, img_size, mask_size, high_res
        self.prompt_encoder = prompt.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                                   input_image_size=(img_size, img_size), mask_in_chans=16)
        _, self.mask_decoder = build_sam2_decoder(256, high_res, decoder_flags)

    def load_sam2(self, sd: dict[str, torch.Tensor], source: str) -> None:
        """``sam_prompt_encoder.*`` and ``sam_mask_decoder.*`` of a SAM 2 state dict, strictly."""
        for part, key in (("prompt_encoder", "sam_prompt_encoder."), ("mask_decoder", "sam_mask_decoder.")):
            state = strip_prefix(sd, key)
            if not self.high_res:  # a cache without the levels: SAM 2's decoder without conv_s0 / conv_s1
                state = {k: v for k, v in state.items() if not k.startswith(("conv_s0.", "conv_s1."))}
            load_strict(getattr(self, part), state, f"{key}* of {source}",
                        hint="pass the official SAM 2 checkpoint the cache was made with")

    @torch.inference_mode()
    def frame_logits(self, features: torch.Tensor, mask: np.ndarray, prompt: str, seed: int,
                     frame_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``[mask_size,mask_size]`` (float32) of one frame prompted from its ground-truth mask.

        Args:
            features: ``[256(+768),g,g]`` the frame's cached (packed) SAM 2 features.
            mask: ``[H,W]`` ground-truth mask covering the whole frame.
            prompt: a key of :data:`PROMPTS`; seed: the random point of an off-centre region.
            frame_hw: unused (SAM 2's input is the whole frame squashed); kept for zero-shot SAM's signature.
        """
        kind, n = PROMPTS[prompt]
        found = prompts_from_mask(mask, kind, n, seed)
        if len(found) == 0:
            return torch.full((self.mask_size, self.mask_size), EMPTY_LOGIT)
        param = self.mask_decoder.iou_token.weight
        embed, levels = unpack_levels(features.to(param)[None], 256)
        scale = np.array([self.img_size / mask.shape[1], self.img_size / mask.shape[0]])
        if kind == "point":
            coords = torch.as_tensor(np.asarray(found) * scale).to(param)[None]  # one set of n points
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=param.device)
        else:  # one set per box: its corners, labels 2 (top-left) and 3 (bottom-right)
            coords = torch.as_tensor(np.asarray(found).reshape(-1, 2, 2) * scale).to(param)
            labels = torch.tensor([[2, 3]], dtype=torch.int, device=param.device).repeat(len(coords), 1)
        sparse, dense = self.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        k = sparse.shape[0]
        low_res, iou, _, _ = self.mask_decoder(
            image_embeddings=embed, image_pe=self.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True, repeat_image=k > 1,
            high_res_features=levels)  # batch 1, broadcast over the k prompt sets as in SAM2ImagePredictor
        best = low_res[torch.arange(k), iou.argmax(dim=1)][:, None]  # [k,1,4g,4g]
        return upsample_logits(best, self.img_size, self.mask_size).amax(dim=0).float().cpu()


def build_zero_shot_sam2(sam_checkpoint: str | Path | None, *, grid: int, img_size: int, high_res: bool,
                         decoder_flags: dict[str, bool], seed: int, **_: object) -> tuple[ZeroShotSAM2, str]:
    """SAM 2's prompt encoder + decoder from its checkpoint, or random from ``seed``; ``(model, weights text)``."""
    from stbava.digest import file_sha256
    from stbava.encoders.hiera import sam2_state

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZeroShotSAM2(grid=grid, img_size=img_size, high_res=high_res, decoder_flags=decoder_flags)
    if sam_checkpoint is None:
        return model.eval(), f"random-init seed={seed} (no SAM 2 checkpoint: numbers test the plumbing only)"
    model.load_sam2(sam2_state(sam_checkpoint), str(sam_checkpoint))
    return model.eval(), f"{sam_checkpoint} sha256={file_sha256(sam_checkpoint)}"
