"""Parameters of each fusion module and of the mask decoder, on SAM 2 (sam2.1_hiera_l) and on SAM (vit_h).

``python benchmarks/fusion_params.py`` (no weights needed: random init; ST-BAVA at the MS3 depth 7, the others at
their published settings). The table in docs/sam2.md ("Measured") is its output.
"""

from __future__ import annotations

import torch

from stbava.config import FUSIONS, load_config
from stbava.model.avs_model import FUSION_PARAM_PREFIXES
from stbava.pipeline.core.net import build_fusion_net


def main() -> None:
    torch.set_num_threads(1)
    for enc in ("sam2.1_hiera_l", "vit_h"):
        for fusion in FUSIONS:
            cfg = load_config("configs/ms3.yaml", {"encoder": {"name": enc},
                                                   "model": {"fusion": fusion, "depth": 7 if fusion == "stbava" else None}})
            params = dict(build_fusion_net(cfg).model.named_parameters())
            fus = sum(p.numel() for k, p in params.items() if k.split(".")[0] in FUSION_PARAM_PREFIXES)
            dec = sum(p.numel() for k, p in params.items() if k.startswith("mask_decoder."))
            convs = sum(p.numel() for k, p in params.items() if k.startswith("mask_decoder.conv_s"))
            print(f"{enc} {fusion}: fusion {fus:,} decoder {dec:,} (of which conv_s0/s1 {convs:,})")


if __name__ == "__main__":
    main()
