"""Official-format checkpoint files: exact loading, safe unpickling, and errors that say what to do."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from stbava import thirdparty
from stbava.encoders.audio import build_vggish
from stbava.encoders.checkpoints import PE_KEY, load_state_file, sam_decoder_state
from stbava.encoders.image import build_image_encoder
from stbava.state_dict import CheckpointError, load_strict, strip_prefix
from stbava.testing import fake_pca_params, write_fake_sam_checkpoint, write_fake_vggish_pca


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_fake_sam_checkpoint(tmp_path_factory.mktemp("ck") / "sam_tiny.pth", "tiny", seed=5)


def test_sam_file_has_official_layout_and_loads_exactly(tiny_ckpt) -> None:
    sd = load_state_file(tiny_ckpt, "sam")
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "pixel_mean" not in sd  # non-persistent in SAM, absent from the released files
    enc_sd = strip_prefix(sd, "image_encoder.")
    assert enc_sd["pos_embed"].shape == (1, 16, 16, 64) and enc_sd["pos_embed"].abs().sum() > 0

    enc = build_image_encoder("tiny", checkpoint=tiny_ckpt, seed=123)
    loaded = enc.encoder.state_dict()
    assert loaded.keys() == enc_sd.keys()
    for k, v in enc_sd.items():
        assert torch.equal(loaded[k], v), k
    assert set(enc.state_dict()) == {f"encoder.{k}" for k in enc_sd}  # mean/std buffers not persisted
    assert not any(p.requires_grad for p in enc.parameters())


def test_sam_decoder_state(tiny_ckpt) -> None:
    sd = load_state_file(tiny_ckpt, "sam")
    dec = sam_decoder_state(sd)
    assert PE_KEY in dec and dec[PE_KEY].shape == (2, 128)
    assert set(dec) - {PE_KEY} == {k for k in sd if k.startswith("mask_decoder.")}
    assert "mask_decoder.iou_token.weight" in dec
    # It loads strictly into SAM's MaskDecoder once the prefix is stripped.
    m = thirdparty.sam_modeling()
    decoder = m.MaskDecoder(num_multimask_outputs=3, transformer=m.TwoWayTransformer(
        depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
        iou_head_depth=3, iou_head_hidden_dim=256)
    load_strict(decoder, strip_prefix(dec, "mask_decoder."), "decoder")
    with pytest.raises(CheckpointError, match="x.pth has no mask_decoder"):
        sam_decoder_state({k: v for k, v in sd.items() if not k.startswith("mask_decoder.")}, source="x.pth")
    with pytest.raises(CheckpointError, match="positional_encoding_gaussian_matrix"):
        sam_decoder_state({k: v for k, v in sd.items() if k != PE_KEY})


def test_missing_file_says_what_and_where(tmp_path) -> None:
    with pytest.raises(CheckpointError) as e:
        build_image_encoder("vit_h", checkpoint=tmp_path / "sam_vit_h_4b8939.pth")
    msg = str(e.value)
    assert "sam_vit_h_4b8939.pth" in msg and "does not exist" in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in msg
    assert "--sam-checkpoint" in msg and "never downloads" in msg
    with pytest.raises(CheckpointError, match=r"vggish-10086976\.pth.*releases") as e:
        build_vggish(checkpoint=tmp_path / "nope.pth")
    assert "--vggish-checkpoint" in str(e.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_state_file(tmp_path, "vggish")


def test_corrupt_and_non_state_dict_files(tmp_path, tiny_ckpt) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth could not be read"):
        build_image_encoder("tiny", checkpoint=truncated)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_state_file(junk, "sam")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_file(tensor_file, "sam")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_state_file(path, "sam")
    assert "must never run" not in capsys.readouterr().out


def test_wrong_encoder_file_names_the_right_encoder(tmp_path, tiny_ckpt) -> None:
    # tiny file for vit_b: the vit_b model is built on the meta device, so this costs nothing.
    with pytest.raises(CheckpointError) as e:
        build_image_encoder("vit_b", checkpoint=tiny_ckpt)
    msg = str(e.value)
    assert "--encoder vit_b" in msg and "missing keys" in msg and "shape mismatches" in msg
    assert "looks like a tiny checkpoint" in msg and "pass --encoder tiny" in msg
    assert "blocks.2.attn.qkv.weight" in msg  # a few keys are listed

    # vit_b-shaped file for tiny: shapes from SAM's own vit_b builder; values irrelevant, so each
    # tensor is a stride-0 view of one zero and the file stays a few KB instead of 375 MB.
    with torch.device("meta"):
        meta_sd = thirdparty.sam_build().sam_model_registry["vit_b"]().state_dict()
    vit_b = tmp_path / "sam_vit_b.pth"
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in meta_sd.items()}, vit_b)
    with pytest.raises(CheckpointError) as e:
        build_image_encoder("tiny", checkpoint=vit_b)
    msg = str(e.value)
    assert "unexpected keys" in msg and "blocks.2.attn.proj.bias" in msg
    assert "pos_embed: file [1, 64, 64, 768] vs model [1, 16, 16, 64]" in msg
    assert "looks like a vit_b checkpoint" in msg and "pass --encoder vit_b" in msg


def test_missing_or_extra_keys_are_listed(tmp_path, tiny_ckpt) -> None:
    sd = torch.load(tiny_ckpt, weights_only=True)
    partial = {k: v for k, v in sd.items() if not k.startswith("image_encoder.neck.")}
    p = tmp_path / "partial.pth"
    torch.save(partial, p)
    with pytest.raises(CheckpointError, match=r"6 missing keys \(neck\.0\.weight, neck\.1\.bias"):
        build_image_encoder("tiny", checkpoint=p)
    extra = dict(sd, **{"image_encoder.prompt_generator.shared_mlp.weight": torch.zeros(2, 2)})
    torch.save(extra, p)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(prompt_generator\.shared_mlp\.weight\)"):
        build_image_encoder("tiny", checkpoint=p)
    # A VGGish file given as the SAM checkpoint is recognised as such.
    vgg = tmp_path / "vggish.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3), "embeddings.0.weight": torch.zeros(1)}, vgg)
    with pytest.raises(CheckpointError, match="no image_encoder.* keys; it looks like a VGGish checkpoint"):
        build_image_encoder("tiny", checkpoint=vgg)


@pytest.mark.parametrize("fmt", ["numpy1.pth", "numpy2.pth", "npz"])
def test_pca_file_formats_load_safely(tmp_path, fmt) -> None:
    name = "pca.npz" if fmt == "npz" else "pca.pth"
    path = write_fake_vggish_pca(tmp_path / name, seed=2, numpy1_pickle=fmt == "numpy1.pth")
    if fmt == "numpy1.pth":
        assert b"numpy.core.multiarray" in path.read_bytes()  # as in the 2019 release file
        with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses numpy arrays
            torch.load(path, weights_only=True)
    params = load_state_file(path, "vggish_pca")
    ref = fake_pca_params(2)
    for k in ("pca_eigen_vectors", "pca_means"):
        assert np.array_equal(np.asarray(params[k]), ref[k])
