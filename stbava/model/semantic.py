"""Semantic AVS (AVSBench-semantic): per-pixel class log-probabilities on top of the same fusion + SAM decoder.

Design (a two-stage "where, then what" AVSS model, in the mask-classification form of MaskFormer, Cheng et
al., NeurIPS 2021, whose semantic inference marginalises per-query class probabilities over per-query masks):

1. *Where* — unchanged from the binary model: the fusion module's prompts go through SAM's ``MaskDecoder``
   with ``multimask_output=True``, giving Q = 3 class-agnostic mask logits ``m_q`` per frame, and the
   decoder's transformer gives each mask its output token (read with a forward hook on
   ``mask_decoder.transformer``, so SAM's decoder runs as it is).
2. *What* — a small head classifies each mask from its output token and the frame's VGGish vector into the
   K - 1 sound classes: ``p_q(c)``. Two-stage AVSS methods do the same split (Stepping Stones, Ma et al.,
   ECCV 2024: localise the sounding objects first, then name them; audio-queried mask classification in
   AVSegFormer, Gao et al., AAAI 2024).
3. Per pixel x, the background and the Q masks compete by a softmax over ``[0, m_1(x), .., m_Q(x)]``
   (weights ``w_0(x) .. w_Q(x)``); then ``P(x = background) = w_0(x)`` and
   ``P(x = c) = sum_q w_q(x) p_q(c)`` for c >= 1. These K probabilities sum to 1, so their logs are returned
   and cross-entropy on them is the exact negative log-likelihood; no matching step is needed, and up to
   Q different classes can be present in one frame.

Where a frame is padding (shorter AVSS clips), the caller zeroes its embeddings (``Net``) and no loss or
metric ever reads it; the model itself is the same for every frame.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stbava.model.avs_model import AVSModel

_TINY = 1e-30  # floor of a class probability before the log (float32 normal range)


class SemanticAVSModel(AVSModel):
    """:class:`AVSModel` + a mask classifier: ``[B,T,K,S,S]`` per-pixel class log-probabilities.

    Parameter names are the binary model's plus ``class_head.*`` (so stage two trains the same prefixes).

    Args:
        num_classes: K, background (index 0) included (AVSS: 71).
        class_hidden: width of the class head's hidden layer.
        **kwargs: :class:`AVSModel` arguments (fusion name and options, sizes).
    """

    MASKS = 3  # SAM's multimask outputs: the Q class-agnostic masks

    def __init__(self, *, num_classes: int = 71, class_hidden: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + a class), got {num_classes}")
        self.num_classes = num_classes
        self.class_head = nn.Sequential(
            nn.LayerNorm(self.embed_dim + self.audio_dim),
            nn.Linear(self.embed_dim + self.audio_dim, class_hidden), nn.GELU(),
            nn.Linear(class_hidden, num_classes - 1),
        )
        self._tokens: torch.Tensor | None = None
        self.mask_decoder.transformer.register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._tokens = output[0]  # [N, 1 + 4 + sparse, C]: IoU token, 4 mask tokens, prompt tokens

    def mask_logits(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[N,Q,S,S]`` mask logits (upsampled as published, not summed), their ``[N,Q,C]`` output tokens and the
        ``[N,A]`` audio, N = B*T. Runs :meth:`AVSModel.decode`, so SAM's and SAM 2's decoders both work."""
        b, t = image_embeddings.shape[:2]
        self._tokens = None
        low_res, audio = self.fuse_and_decode(image_embeddings, audio_embeddings)
        hs, self._tokens = self._tokens, None  # not kept between calls (it would hold the autograd graph)
        if hs is None:
            raise RuntimeError("the mask decoder did not run its transformer; cannot classify its masks")
        # token order: [SAM 2's object-score token,] IoU token, 4 mask tokens, prompts; mask tokens 1..3 are
        # the multimask outputs (segment_anything / sam2 MaskDecoder.predict_masks)
        first = 2 + int(bool(getattr(self.mask_decoder, "pred_obj_scores", False)))
        tokens = hs[:, first:first + self.MASKS]
        x = F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = F.interpolate(x, (self.mask_size, self.mask_size), mode="bilinear", align_corners=False)
        return x, tokens, audio.reshape(b * t, -1)

    def forward(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
        """Per-pixel class log-probabilities.

        Args:
            image_embeddings: ``[B,T,C,g,g]``; audio_embeddings: ``[B,T,128]`` (as :meth:`AVSModel.forward`).

        Returns:
            ``[B,T,K,mask_size,mask_size]`` float log-probabilities (logsumexp over K = 0); argmax = class map.
        """
        b, t = image_embeddings.shape[:2]
        masks, tokens, audio = self.mask_logits(image_embeddings, audio_embeddings)
        masks, tokens, audio = masks.float(), tokens.float(), audio.float()
        feats = torch.cat([tokens, audio[:, None].expand(-1, self.MASKS, -1)], dim=-1)
        p_cls = self.class_head(feats).float().softmax(-1)  # [N,Q,K-1]
        assign = torch.cat([masks.new_zeros(masks[:, :1].shape), masks], dim=1).log_softmax(dim=1)  # [N,1+Q,S,S]
        fg = torch.einsum("nqhw,nqc->nchw", assign[:, 1:].exp(), p_cls)
        logp = torch.cat([assign[:, :1], fg.clamp_min(_TINY).log()], dim=1)
        return logp.reshape(b, t, self.num_classes, self.mask_size, self.mask_size)
