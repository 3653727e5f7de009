"""SAM 2 (Hiera) image encoder: official-format checkpoints load strictly and are found again by sha256, and the
features equal SAM 2's own image path (forward_image + _prepare_backbone_features + no_mem_embed) run by hand."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from stbava.config import ConfigError, EncoderConfig
from stbava.encoders.build import build_frozen_encoders
from stbava.encoders.fingerprint import encoder_fingerprint
from stbava.encoders.hiera import FrozenSAM2Encoder, build_sam2_model
from stbava.encoders.weights import WeightSearch, locate_weights
from stbava.feature_levels import unpack_levels
from stbava.state_dict import CheckpointError
from stbava.testing import build_sam2_by_hand, write_fake_sam2_checkpoint, write_fake_sam_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_fake_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2_mini.pt", seed=3)


@pytest.fixture(scope="module")
def reference():
    """The model the checkpoint was written from, built by sam2 alone."""
    return build_sam2_by_hand(seed=3)


def _by_hand(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SAM2ImagePredictor.set_image's feature path on an already resized [N,3,S,S] 0..255 frame."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    backbone_out = model.forward_image((x / 255.0 - mean) / std)
    _, feats, _, _ = model._prepare_backbone_features(backbone_out)
    assert model.directly_add_no_mem_embed
    feats[-1] = feats[-1] + model.no_mem_embed
    sizes = [(64, 64), (32, 32), (16, 16)]  # 256-pixel input: grid 16, levels 4x and 2x
    maps = [f.permute(1, 2, 0).reshape(x.shape[0], -1, *s) for f, s in zip(feats, sizes)]
    return maps[-1], maps[:-1]


def test_features_equal_sam2_image_path_by_hand(ckpt, reference) -> None:
    enc, _ = build_frozen_encoders(EncoderConfig(name="sam2_mini", sam_checkpoint=str(ckpt), seed=99))
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():
        packed = enc(x).to(torch.float16)  # as cached
        embed, (s0, s1) = _by_hand(reference, x)
    assert packed.shape == (2, 1024, 16, 16)
    got_embed, (got_s0, got_s1) = unpack_levels(packed.float(), 256)
    for got, want in ((got_embed, embed), (got_s0, s0), (got_s1, s1)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3)  # float16 rounding
    assert min(embed.std(), s0.std(), s1.std()) > 0.01  # real features, not zeros
    off = FrozenSAM2Encoder(enc.model, "sam2_mini", high_res=False)  # --high-res-features off
    with torch.inference_mode():
        torch.testing.assert_close(off(x), embed, rtol=1e-4, atol=1e-4)  # the embedding alone, [2,256,16,16]


def test_weights_come_from_the_file_and_load_strictly(ckpt, reference, tmp_path) -> None:
    want = reference.state_dict()
    got = build_sam2_model("sam2_mini", ckpt, seed=7).state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    sd = torch.load(ckpt, weights_only=True)
    del sd["model"]["no_mem_embed"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no_mem_embed"):
        build_sam2_model("sam2_mini", tmp_path / "missing.pt")
    torch.save(sd["model"], tmp_path / "flat.pt")  # not wrapped in {"model": ...}
    with pytest.raises(CheckpointError, match=r"not \{'model': state_dict\}"):
        build_sam2_model("sam2_mini", tmp_path / "flat.pt")
    sam = write_fake_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint"):
        build_sam2_model("sam2_mini", sam)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_sam2_model("sam2_mini", tmp_path / "nowhere.pt")


def test_fingerprint_records_sha256_and_the_file_is_found_again(ckpt, tmp_path) -> None:
    enc = EncoderConfig(name="sam2_mini", sam_checkpoint=str(ckpt))
    fp = encoder_fingerprint(enc, frames=5)
    image = fp["image"]
    assert image["weights"] == "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert image["family"] == "sam2" and image["config"] == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert len(image["levels"]) == 3 and image["grid"] == 16 and fp["numerics"] == {"image_amp": "off"}
    off = encoder_fingerprint(EncoderConfig(name="sam2_mini", sam_checkpoint=str(ckpt), high_res_features=False), 5)
    assert len(off["image"]["levels"]) == 1
    moved = tmp_path / "weights"
    moved.mkdir()
    shutil.copy(ckpt, moved / ckpt.name)
    gone = EncoderConfig(name="sam2_mini", sam_checkpoint=str(tmp_path / "old" / ckpt.name))
    found = locate_weights(gone, fp, WeightSearch(weights_dir=str(moved)), subject="test", only=("sam",))
    assert found.sam_checkpoint == str((moved / ckpt.name).resolve())
    (moved / ckpt.name).write_bytes(b"other")
    with pytest.raises(CheckpointError, match="is not the sam file"):
        locate_weights(gone, fp, WeightSearch(weights_dir=str(moved)), subject="test", only=("sam",))


def test_names_and_settings_are_checked() -> None:
    from stbava.config import config_from_dict

    with pytest.raises(ConfigError, match="SAM 2 setting"):
        config_from_dict({"encoder": {"name": "tiny", "high_res_features": False}})
    cfg = config_from_dict({"encoder": {"name": "sam2.1_hiera_l"}})
    assert cfg.encoder.name == "sam2.1_hiera_l"
    from stbava.encoders.image import adapter_geometry, embedding_shape, model_geometry

    assert embedding_shape("sam2.1_hiera_l") == (1024, 64, 64) and embedding_shape("sam2_hiera_s", False)[0] == 256
    assert model_geometry("sam2.1_hiera_b+")["decoder_flags"]["pred_obj_scores"] is True
    with pytest.raises(ConfigError, match="constant-width ViT"):
        adapter_geometry("sam2_mini")
