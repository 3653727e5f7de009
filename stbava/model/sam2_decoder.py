"""SAM 2's mask decoder and dense PE, from the ``sam2`` package, built from plain values (no encoder names).

The hyperparameters are those of ``SAM2Base._build_sam_heads`` (3 multimask outputs, a depth-2 TwoWayTransformer
of width 256, MLP 2048, 8 heads, IoU head depth 3 / width 256); the flags that change the decoder's parameters
(``pred_obj_scores``, ...) come from the encoder's config through ``decoder_flags``, so the official checkpoint's
``sam_mask_decoder.*`` keys load strictly. With ``high_res`` the decoder adds the two high-resolution levels in
its upscaling, as SAM 2 does (``use_high_res_features_in_sam``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from stbava import thirdparty


def build_sam2_decoder(embed_dim: int, high_res: bool, decoder_flags: Mapping[str, bool] | None = None
                       ) -> tuple[nn.Module, nn.Module]:
    """``(pe_layer, mask_decoder)``: SAM 2's ``PositionEmbeddingRandom(C/2)`` and ``MaskDecoder``."""
    dec = thirdparty.sam2_module("modeling.sam.mask_decoder")
    transformer = thirdparty.sam2_module("modeling.sam.transformer")
    pe = thirdparty.sam2_module("modeling.position_encoding")
    mask_decoder = dec.MaskDecoder(
        num_multimask_outputs=3,
        transformer=transformer.TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=high_res,
        **dict(decoder_flags or {}),
    )
    # conv_s0 / conv_s1 (with high_res) stay in the state dict for strict loading but never run here: they ran
    # at extraction (forward_image), the cached levels are their output, so they get no gradient.
    return pe.PositionEmbeddingRandom(embed_dim // 2), mask_decoder
