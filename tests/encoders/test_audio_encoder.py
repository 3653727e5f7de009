"""Frozen VGGish: informative random init, exact checkpoint loading, PCA as torchvggish applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stbava import thirdparty
from stbava.encoders.audio import build_vggish, embed_audio
from stbava.state_dict import CheckpointError
from stbava.testing import (
    fake_pca_params,
    write_fake_sam_checkpoint,
    write_fake_vggish_checkpoint,
    write_fake_vggish_pca,
)

SR = 16000


def _examples(wave: np.ndarray) -> np.ndarray:
    """[N,1,96,64] log-mel examples with torchvggish's own numpy code (vggish_input without resampy)."""
    mf, vp = thirdparty.vggish_mel()
    lm = mf.log_mel_spectrogram(
        wave, audio_sample_rate=SR, log_offset=vp.LOG_OFFSET,
        window_length_secs=vp.STFT_WINDOW_LENGTH_SECONDS, hop_length_secs=vp.STFT_HOP_LENGTH_SECONDS,
        num_mel_bins=vp.NUM_MEL_BINS, lower_edge_hertz=vp.MEL_MIN_HZ, upper_edge_hertz=vp.MEL_MAX_HZ)
    return mf.frame(lm, 96, 96)[:, None].astype(np.float32)


def _tone(freq: float, seed: int, seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * noise


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over examples of |a - b| / max(|a|, |b|)."""
    return ((a - b).norm(dim=1) / torch.maximum(a.norm(dim=1), b.norm(dim=1))).mean().item()


@pytest.fixture(scope="module")
def random_vgg():
    return build_vggish(seed=0)


@pytest.fixture(scope="module")
def vggish_ckpt(tmp_path_factory):
    return write_fake_vggish_checkpoint(tmp_path_factory.mktemp("vg") / "vggish-10086976.pth", seed=11)


def test_random_init_separates_different_sounds(random_vgg) -> None:
    vgg = random_vgg
    a1, a2, b = (embed_audio(vgg, _examples(w)) for w in (_tone(440, 1), _tone(440, 2), _tone(1500, 3)))
    assert a1.shape == (5, 128)
    assert a1.std() > 0.5, "Kaiming init must keep the output scale (default init gives ~0.005)"
    assert (a1 >= 0).all()  # the last layer is a ReLU
    # Two tones differ clearly; the same tone with fresh noise differs much less.
    assert _rel(a1, b) > 0.25
    assert _rel(a1, b) > 2 * _rel(a1, a2)


def test_pytorch_default_init_would_collapse() -> None:
    # Why build_vggish re-initialises: torchvggish's VGG with PyTorch's default init is near-constant.
    tv = thirdparty.vggish_model()
    torch.manual_seed(0)
    default = tv.VGG(tv.make_layers(), postprocess=False).eval()
    with torch.no_grad():
        out = default(torch.from_numpy(_examples(_tone(440, 1))))
    assert out.std() < 0.05


def test_random_init_seeded_frozen_global_rng_untouched(random_vgg) -> None:
    a = random_vgg
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    b = build_vggish(seed=0)
    assert torch.equal(torch.rand(2), expected)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert all(torch.isfinite(p).all() for p in a.parameters())
    assert all((m.bias == 0).all() for m in a.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    # Kaiming fan_in: std of the first linear layer's weights is sqrt(2 / 12288).
    torch.testing.assert_close(a.embeddings[0].weight.std().item(), (2 / 12288) ** 0.5, rtol=0.01, atol=0)
    x = _examples(_tone(700, 0))
    c = build_vggish(seed=1)
    assert torch.equal(embed_audio(a, x), embed_audio(b, x))
    assert not torch.equal(embed_audio(a, x), embed_audio(c, x))


def test_checkpoint_loads_exactly_and_matches_raw_torchvggish(vggish_ckpt) -> None:
    sd = torch.load(vggish_ckpt, map_location="cpu", weights_only=True)
    assert sorted(sd) == sorted(
        [f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")]
        + [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")])
    ours = build_vggish(checkpoint=vggish_ckpt, seed=999)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k

    tv = thirdparty.vggish_model()
    raw = tv.VGG(tv.make_layers(), postprocess=False).eval()
    raw.load_state_dict(sd, strict=True)
    x = np.concatenate([_examples(_tone(440, 1)), _examples(_tone(2000, 2))])
    with torch.no_grad():
        expected = raw(torch.from_numpy(x))
    got = embed_audio(ours, x)
    assert got.shape == (10, 128) and torch.equal(got, expected)


@pytest.mark.parametrize("name", ["pca.pth", "pca.npz"])
def test_pca_matches_torchvggish_postprocessor(tmp_path, vggish_ckpt, name) -> None:
    pca = write_fake_vggish_pca(tmp_path / name, seed=4)
    vgg = build_vggish(checkpoint=vggish_ckpt, pca=pca)
    assert "pca_eigen_vectors" not in vgg.state_dict()  # non-persistent: the VGG state dict stays official
    x = _examples(_tone(440, 1))
    tv = thirdparty.vggish_model()
    # torchvggish's own postprocessing, set up the way its __init__ does from the (numpy) params file.
    params = fake_pca_params(4)
    pp = tv.Postprocessor.__new__(tv.Postprocessor)
    pp._pca_matrix = torch.as_tensor(params["pca_eigen_vectors"]).float()
    pp._pca_means = torch.as_tensor(params["pca_means"].reshape(-1, 1)).float()
    with torch.no_grad():
        expected = pp.postprocess(vgg(torch.from_numpy(x)))
    got = embed_audio(vgg, x)
    assert got.shape == (5, 128) and torch.equal(got, expected)
    assert got.min() >= 0 and got.max() <= 255 and torch.equal(got, got.round())
    one = embed_audio(vgg, x[:1])  # torchvggish squeezes a single example; we keep [1,128]
    assert one.shape == (1, 128) and torch.equal(one[0], got[0])


def test_bad_files_and_inputs(tmp_path, random_vgg) -> None:
    sam_file = write_fake_sam_checkpoint(tmp_path / "sam_tiny.pth", "tiny")
    with pytest.raises(CheckpointError, match="missing keys.*looks like a SAM checkpoint"):
        build_vggish(checkpoint=sam_file)
    bad_pca = tmp_path / "pca.npz"
    np.savez(bad_pca, pca_eigen_vectors=np.eye(128))
    with pytest.raises(CheckpointError, match="lacks pca_eigen_vectors / pca_means"):
        build_vggish(pca=bad_pca)
    np.savez(bad_pca, pca_eigen_vectors=np.eye(64), pca_means=np.zeros(64))
    with pytest.raises(CheckpointError, match=r"expected pca_eigen_vectors \[128,128\]"):
        build_vggish(pca=bad_pca)
    with pytest.raises(ValueError, match=r"\[N,1,96,64\]"):
        embed_audio(random_vgg, np.zeros((5, 96, 64), np.float32))
