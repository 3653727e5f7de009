"""A fusion module + SAM's mask decoder: cached embeddings in, 224x224 mask logits out (REFERENCE §4-§5).

The model deals only in tensors: ``[B,T,256,h,w]`` SAM image embeddings and ``[B,T,128]`` VGGish vectors.
The fusion module is chosen by name from :mod:`stbava.model.fusion` (ST-BAVA by default; ``none`` is the
decoder-only baseline). SAM's ``MaskDecoder`` is used as is. It expects one image and B prompt sets (it
repeats the image embedding per prompt set), so all B*T frames go through it in one call by passing a zero
image embedding and the fusion's dense output ``E + V``: the decoder's ``src = 0 + (E + V)`` equals the
published ``E + V`` exactly, without the published per-frame loop.

State-dict layout: ``pe_layer.*`` and ``mask_decoder.*`` belong to this model; the fusion module's weights
sit under ``fusion.*``, except for modules with ``flat_state_dict`` (ST-BAVA and ``none``), whose
sub-modules are registered here directly, so the keys stay the published ``audio_embed_layer.*`` and
``layers.*`` (official weights and earlier checkpoints load unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stbava import thirdparty
from stbava.feature_levels import packed_channels, unpack_levels
from stbava.model.fusion import FusionOutput, build_fusion
from stbava.model.fusion.registry import check_inputs
from stbava.model.sam2_decoder import build_sam2_decoder

# Top-level names under which fusion parameters can live in an AVSModel (flat modules use the first two).
FUSION_PARAM_PREFIXES = ("audio_embed_layer", "layers", "fusion")


def upsample_logits(low_res: torch.Tensor, img_size: int, mask_size: int) -> torch.Tensor:
    """``[N,K,4g,4g]`` decoder logits -> bilinear to img_size, then to mask_size, per channel, summed over the
    K channels: ``[N,S,S]`` (the published two-step resize; K = 1 is one mask as it is)."""
    x = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, (mask_size, mask_size), mode="bilinear", align_corners=False)
    return x.sum(dim=1)


class AVSModel(nn.Module):
    """A registered fusion module, SAM's (or SAM 2's) dense PE and mask decoder.

    Args:
        fusion: registered fusion name (``stbava`` | ``tpavi`` | ``han`` | ``cmran`` | ``jca`` | ``none``).
        embed_dim: SAM prompt width C (256).
        grid: side of the image-embedding grid (64 for SAM ViTs, 16 for ``tiny``); inputs are checked.
        img_size: encoder input side; low-res masks are upsampled to it first, as published (1024 / 256).
        mask_size: side of the returned logits (224, the AVSBench mask size).
        audio_dim: VGGish width (128).
        decoder: ``sam`` (segment_anything's MaskDecoder) | ``sam2`` (SAM 2's, :mod:`stbava.model.sam2_decoder`).
        high_res: SAM 2 only: the image features carry SAM 2's two high-resolution levels (packed,
            :mod:`stbava.feature_levels`) and the decoder adds them in its upscaling, as SAM 2 does.
        decoder_flags: SAM 2 only: its config's decoder flags (``pred_obj_scores``, ...).
        fusion_options: the module's own constructor keywords (ST-BAVA: ``depth``, ``heads``, ``mlp_dim``,
            ``attn_dropout``, ``spatial_mode``, ``temporal``, ``bidirectional``; JCA: ``frames``).
    """

    def __init__(self, *, fusion: str = "stbava", embed_dim: int = 256, grid: int = 64, img_size: int = 1024,
                 mask_size: int = 224, audio_dim: int = 128, decoder: str = "sam", high_res: bool = False,
                 decoder_flags: dict[str, bool] | None = None, **fusion_options: Any) -> None:
        super().__init__()
        self.embed_dim, self.grid, self.img_size, self.mask_size = embed_dim, grid, img_size, mask_size
        self.audio_dim, self.fusion_name, self.decoder, self.high_res = audio_dim, fusion, decoder, high_res
        self._attach_fusion(build_fusion(fusion, embed_dim=embed_dim, audio_dim=audio_dim, grid=grid,
                                         **fusion_options))
        if decoder == "sam2":
            self.pe_layer, self.mask_decoder = build_sam2_decoder(embed_dim, high_res, decoder_flags)
            return
        if decoder != "sam" or high_res or decoder_flags:
            raise ValueError(f"decoder {decoder!r} (high_res={high_res}, flags {decoder_flags}): SAM's decoder "
                             "takes no high-res levels or flags; use decoder='sam2' for those")
        sam = thirdparty.sam_modeling()
        self.pe_layer = sam.prompt_encoder.PositionEmbeddingRandom(embed_dim // 2)
        self.mask_decoder = sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=embed_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        )

    def _attach_fusion(self, module: nn.Module) -> None:
        """Register ``module`` as ``fusion``, or, if it is flat, its sub-modules under their own names."""
        if not getattr(module, "flat_state_dict", False):
            self.fusion = module
            return
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise TypeError(f"{type(module).__name__} is flat_state_dict but holds tensors of its own; "
                            "move them into sub-modules")
        for name, child in module.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_flat_fusion", module)  # not a sub-module: its children are registered above

    @property
    def fusion_module(self) -> nn.Module:
        """The fusion module (for flat modules the same sub-module objects this model registers)."""
        flat = self.__dict__.get("_flat_fusion")
        return flat if flat is not None else self._modules["fusion"]

    def train(self, mode: bool = True) -> AVSModel:
        """Also set the mode of a flat fusion module itself (its children follow through this model)."""
        super().train(mode)
        self.fusion_module.training = mode
        return self

    @property
    def supports_center_audio(self) -> bool:
        return hasattr(self.fusion_module, "center_audio")

    @property
    def supports_fuse(self) -> bool:
        """Whether :meth:`fuse` (features for the similarity figure) exists for this fusion module."""
        return hasattr(self.fusion_module, "fuse")

    @torch.no_grad()
    def center_audio_projection(self, mean_audio: torch.Tensor) -> None:
        """Data-dependent init: fold "subtract the mean training audio" into the projection bias.

        Why: VGGish embeddings share a large common component (random VGGish: cosine ~0.94 between
        different classes; pretrained VGGish vectors are non-negative), and A0 is L2-normalised right after
        the projection, so with a plain random init every A0 points almost the same way and the sound-specific
        part is a small remainder (on the demo data: +0.13 test mIoU with centring; docs/results.md, log
        "2026-11-24: earlier data"). Subtracting
        ``W @ mean`` from the bias, i.e. projecting ``x - mean`` (the architecture and parameter set are
        unchanged), makes A0 encode how a sound differs from the average one. Only ST-BAVA and ``none`` have
        such a normalised projection; the published modules take raw VGGish as published.

        Args:
            mean_audio: ``[audio_dim]`` mean VGGish vector of the training clips.

        Raises:
            TypeError: the fusion module has no ``center_audio`` (see :attr:`supports_center_audio`).
        """
        if not self.supports_center_audio:
            raise TypeError(f"fusion {self.fusion_name!r} has no L2-normalised audio projection to centre; "
                            "set model.center_audio=false")
        self.fusion_module.center_audio(mean_audio)

    def _check(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion contract's shape checks on this model's sizes + cast to its dtype (cached embeddings are
        float16)."""
        return check_inputs(image, audio, embed_dim=self.embed_dim, audio_dim=self.audio_dim, grid=self.grid,
                            dtype=self.mask_decoder.iou_token.weight.dtype)

    def _split(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Packed ``[B,T,C(+3C),g,g]`` -> the embedding the fusion module sees and SAM 2's levels (or None).

        Raises:
            ValueError: features with levels for a model without them, or the reverse (another cache's).
        """
        if self.decoder != "sam2":
            return image, None
        want = packed_channels(self.embed_dim, self.high_res)
        if image.ndim != 5 or image.shape[2] != want:
            raise ValueError(f"image features must be [B,T,{want},{self.grid},{self.grid}] for this SAM 2 model "
                             f"(high-res levels {'on' if self.high_res else 'off'}), got {tuple(image.shape)}; "
                             "use the cache (--high-res-features setting) the model was trained on")
        return unpack_levels(image, self.embed_dim)

    def dense_pe(self, dtype: torch.dtype) -> torch.Tensor:
        """SAM's random-Fourier PE of the grid, ``[1,C,g,g]``."""
        return self.pe_layer((self.grid, self.grid)).unsqueeze(0).to(dtype)

    def fuse(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> FusionOutput:
        """Run only the fusion part (ST-BAVA: see :class:`FusionOutput`); inputs as in :meth:`forward`.

        Raises:
            TypeError: the fusion module does not expose its features (see :attr:`supports_fuse`).
        """
        if not self.supports_fuse:
            raise TypeError(f"fusion {self.fusion_name!r} does not expose before/after features (only stbava)")
        image, audio = self._check(self._split(image_embeddings)[0], audio_embeddings)
        return self.fusion_module.fuse(image, audio, self.dense_pe(image.dtype))

    def upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """``[N,3,4g,4g]`` -> bilinear to img_size, then to mask_size, per channel, summed: ``[N,S,S]``."""
        return upsample_logits(low_res, self.img_size, self.mask_size)

    def forward(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
        """Segment the sounding objects of every frame.

        Args:
            image_embeddings: ``[B,T,C,g,g]`` SAM embeddings (any float dtype; cast to the model's); for a SAM 2
                model with high-res levels the packed ``[B,T,4C,g,g]`` (:mod:`stbava.feature_levels`).
            audio_embeddings: ``[B,T,128]`` VGGish vectors of the T frames.

        Returns:
            ``[B,T,mask_size,mask_size]`` logits (sum of SAM's 3 multimask logits; sigmoid not applied).
        """
        b, t = image_embeddings.shape[:2]
        low_res, _ = self.fuse_and_decode(image_embeddings, audio_embeddings)
        return self.upsample(low_res).reshape(b, t, self.mask_size, self.mask_size)

    def fuse_and_decode(self, image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion module + mask decoder on B clips: ``[N,3,4g,4g]`` low-res logits and the ``[B,T,A]`` audio the
        fusion module saw (N = B*T); shared by this model and the semantic one."""
        embed, levels = self._split(image_embeddings)
        image, audio = self._check(embed, audio_embeddings)
        pe = self.dense_pe(image.dtype)  # once per forward: the fusion module and the decoder share it
        prompts = self.fusion_module(image, audio, pe)
        flat = None if levels is None else [lv.flatten(0, 1).to(image.dtype) for lv in levels]
        return self.decode(prompts.dense.flatten(0, 1), prompts.sparse.flatten(0, 1), flat, pe), audio

    def decode(self, dense: torch.Tensor, sparse: torch.Tensor, high_res: list[torch.Tensor] | None = None,
               pe: torch.Tensor | None = None) -> torch.Tensor:
        """The mask decoder on N frames' prompts: the fusion contract's visual src and sparse tokens.

        Args:
            dense: ``[N,C,g,g]`` the whole visual src (the decoder gets a zero image embedding plus this).
            sparse: ``[N,k,C]`` prompt tokens.
            high_res: SAM 2's ``[s0 [N,C/8,4g,4g], s1 [N,C/4,2g,2g]]`` as ``_forward_sam_heads`` passes them.
            pe: ``[1,C,g,g]`` the grid's positional encoding when the caller has it (computed here if not).

        Returns:
            ``[N,3,4g,4g]`` low-resolution multimask logits. SAM 2's object score does not gate them here (its
            ``_forward_sam_heads`` sets masks of frames it scores as empty to -1024): AVS learns silence from
            the masks, and a hard gate would give those frames no gradient.
        """
        c, h, w = dense.shape[1:]
        zero = dense.new_zeros(1, c, h, w)
        pe = self.dense_pe(dense.dtype) if pe is None else pe
        if self.decoder == "sam2":
            return self.mask_decoder(image_embeddings=zero, image_pe=pe, sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, multimask_output=True, repeat_image=True,
                                     high_res_features=high_res)[0]
        return self.mask_decoder(image_embeddings=zero, image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense, multimask_output=True)[0]
