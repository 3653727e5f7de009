"""AVSS through the real CLI (synth -> extract -> train -> eval), and padded frames that change nothing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from predict_helpers import run_cli as _run

from stbava.cache import open_cache
from stbava.cli import main
from stbava.config import FUSIONS, Config, config_from_dict
from stbava.data.clips import DataError, load_clips
from stbava.data.synthetic_avss import write_synthetic_avss
from stbava.losses import masked_ce
from stbava.metrics import SemanticAccumulator
from stbava.model.build import build_model
from stbava.model.semantic import SemanticAVSModel
from stbava.pipeline.core.net import Net
from stbava.pipeline.core.sources import CachedEmbedder, CachedSource, collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def avss_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("avss")
    data = write_synthetic_avss(root / "data", {"train": 3}, seed=1)  # one v1s, v1m and v2 clip (CLI: test_avss_data)
    cache = root / "cache.zarr"
    _run("extract-features", "--data-root", data, "--subset", "avss", "--cache", cache, "--encoder", "tiny",
         "--batch-size", 3, "--no-progress", "--num-workers", 0)
    run = root / "run"
    _run("train-fusion", "--cache", cache, "--data-root", data, "--subset", "avss", "--run-dir", run,
         "--epochs", 1, "--batch-size", 3, "--depth", 1, "--set", "num_classes=7", "--max-steps", 1)
    return {"data": data, "cache": cache, "run": run, "root": root}


def test_cache_pads_short_clips_with_zero_frames(avss_run):
    reader = open_cache(avss_run["cache"])
    assert reader.frames == 10
    clips = {c.id: c for c in load_clips(avss_run["data"], "avss", ["train"])}
    v1s, v2 = reader.image_embeddings("syn_train_0000"), reader.image_embeddings("syn_train_0002")
    assert clips["syn_train_0000"].num_frames == 5
    assert np.abs(v1s[5:]).max() == 0 and np.abs(v1s[:5]).min() < np.abs(v1s[:5]).max()
    assert np.abs(reader.audio_embeddings("syn_train_0000")[5:]).max() == 0
    assert (np.abs(v2).reshape(10, -1).max(1) > 0).all()
    item = CachedSource(avss_run["cache"], 10).dataset([clips["syn_train_0000"]])[0]
    assert item["frame_valid"].tolist() == [True] * 5 + [False] * 5
    assert item["mask_valid"].tolist() == [True] + [False] * 9  # v1s train: frame 0 only
    assert item["masks"].dtype == torch.int64 and 0 < int(item["masks"][0].max()) < 7
    short = dataclasses.replace(clips["syn_train_0000"], frame_paths=clips["syn_train_0000"].frame_paths[:3])
    with pytest.raises(DataError, match="3 frames in the metadata but more in the cache"):
        CachedSource(avss_run["cache"], 10).dataset([short])[0]


def test_eval_writes_the_semantic_report(avss_run):
    out = avss_run["root"] / "eval.json"
    text = _run("eval", "--checkpoint", avss_run["run"], "--cache", avss_run["cache"], "--data-root",
                avss_run["data"], "--split", "train", "--out", out)
    assert "avss" in text
    rep = json.loads(out.read_text())
    assert rep["subset"] == "avss" and rep["clips"] == 3 and rep["frames"] == 16  # v1s 1 + v1m 5 + v2 10, no padding
    assert len(rep["per_class_iou"]) == 7 and rep["config"]["num_classes"] == 7
    assert rep["miou"] == pytest.approx(float(np.mean(rep["per_class_iou"])))
    assert rep["miou_no_background"] == pytest.approx(float(np.mean(rep["per_class_iou"][1:])))
    assert 0 <= rep["fscore"] <= 1 and rep["per_class_iou"][0] > 0  # background is found at least in part


def test_a_padded_frame_changes_neither_loss_nor_metric():
    torch.manual_seed(0)
    cfg = Config(subset="avss", frames=4, num_classes=5)
    model = SemanticAVSModel(num_classes=5, fusion="stbava", grid=4, img_size=16, mask_size=8, depth=1, heads=2,
                             mlp_dim=16)
    net = Net(model, CachedEmbedder()).eval()
    g = torch.Generator().manual_seed(1)
    image, audio = torch.randn(2, 4, 256, 4, 4, generator=g), torch.randn(2, 4, 128, generator=g)
    labels = torch.randint(0, 5, (2, 4, 8, 8), generator=g)
    frame_valid = torch.tensor([[True, True, False, False], [True, True, True, True]])

    def score(img, aud, lab):
        logits = net(image_embeddings=img, audio_embeddings=aud, frame_valid=frame_valid)
        assert logits.shape == (2, 4, 5, 8, 8)
        acc = SemanticAccumulator(5)
        acc.update(logits.flatten(0, 1), lab.flatten(0, 1), frame_valid.flatten())
        return masked_ce(logits, lab, frame_valid), acc.result()

    with torch.no_grad():
        loss, metric = score(image, audio, labels)
        img2, aud2, lab2 = image.clone(), audio.clone(), labels.clone()
        img2[0, 2:] = torch.randn(2, 256, 4, 4, generator=g) * 50  # whatever a padded frame holds
        aud2[0, 2:] = 1e3
        lab2[0, 2:] = 4
        loss2, metric2 = score(img2, aud2, lab2)
        img3 = image.clone()
        img3[0, 1] += 1.0  # control: a real frame does change the result
        loss3, _ = score(img3, audio, labels)
    assert torch.equal(loss, loss2) and metric == metric2
    assert not torch.isclose(loss, loss3)
    assert cfg.num_classes == 5
    # log-probabilities: they sum to one over the classes at every pixel
    with torch.no_grad():
        lp = net(image_embeddings=image, audio_embeddings=audio)
    torch.testing.assert_close(lp.exp().sum(2), torch.ones(2, 4, 8, 8), atol=1e-5, rtol=0)


def test_collate_keeps_frame_valid():
    items = [{"clip_id": "a", "masks": torch.zeros(2, 1, 1, dtype=torch.long), "mask_valid": torch.ones(2).bool(),
              "frame_valid": torch.tensor([True, False])}]
    assert collate(items).inputs()["frame_valid"].tolist() == [[True, False]]


TINY_OPTIONS = {"stbava": {"depth": 1, "heads": 2, "mlp_dim": 16}, "han": {"depth": 1, "dim_feedforward": 16},
                "cmran": {"encoder_layers": 1, "dim_feedforward": 16}, "jca": {"depth": 1, "frames": 2},
                "tpavi": {}, "none": {}}


def test_every_fusion_module_gives_class_log_probs():
    """The semantic head sits on every fusion module (and build_model picks it for subset avss)."""
    assert set(TINY_OPTIONS) == set(FUSIONS)
    g = torch.Generator().manual_seed(0)
    image, audio = torch.randn(1, 2, 256, 4, 4, generator=g), torch.randn(1, 2, 128, generator=g)
    for fusion, options in TINY_OPTIONS.items():
        torch.manual_seed(0)
        model = SemanticAVSModel(num_classes=4, fusion=fusion, grid=4, img_size=16, mask_size=8, **options).eval()
        with torch.no_grad():
            lp = model(image, audio)
        assert lp.shape == (1, 2, 4, 8, 8) and torch.isfinite(lp).all(), fusion
        torch.testing.assert_close(lp.exp().sum(2), torch.ones(1, 2, 8, 8), atol=1e-5, rtol=0)
    cfg = config_from_dict({"subset": "avss", "frames": 10, "num_classes": 4, "model": {"fusion": "none"}})
    built = build_model(cfg, grid=4, img_size=16)
    assert isinstance(built, SemanticAVSModel) and built.num_classes == 4
    assert any(n.startswith("class_head.") for n, _ in built.named_parameters())


def test_binary_only_commands_refuse_an_avss_checkpoint(avss_run):
    from stbava.checkpoint import CheckpointFormatError
    from stbava.pipeline.predict.windows import load_predictor

    with pytest.raises(CheckpointFormatError, match="semantic"):
        load_predictor(avss_run["run"] / "best.pt", device="cpu")
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(avss_run["run"]), "--cache", str(avss_run["cache"]),
                                    "--data-root", str(avss_run["data"]), "--split", "train", "--overlays", "1"])
    assert res.exit_code != 0 and "not available for subset avss" in res.output


def test_semantic_head_on_sam2_reads_the_multimask_tokens():
    """On SAM 2's decoder (object-score token first) the head reads the 3 multimask output tokens."""
    from stbava.encoders.hiera import decoder_geometry
    from stbava.feature_levels import packed_channels

    torch.manual_seed(0)
    geo = decoder_geometry("sam2_mini", True)
    model = SemanticAVSModel(num_classes=4, fusion="none", mask_size=16, **geo).eval()
    assert model.mask_decoder.pred_obj_scores  # the case where the offset matters
    seen = {}
    model.mask_decoder.output_hypernetworks_mlps[1].register_forward_hook(
        lambda m, args, out: seen.update(token1=args[0]))  # returns None: the output stays
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 2, packed_channels(256, True), model.grid, model.grid, generator=g)
    with torch.no_grad():
        _, tokens, _ = model.mask_logits(image, torch.randn(1, 2, 128, generator=g))
        torch.testing.assert_close(tokens[:, 0], seen["token1"])  # multimask output 1 = mask token 1, as SAM 2 uses
        assert not torch.allclose(tokens[:, 0], tokens[:, 1])
        lp = model(image, torch.randn(1, 2, 128, generator=g))
    assert lp.shape == (1, 2, 4, 16, 16)
    torch.testing.assert_close(lp.exp().sum(2), torch.ones(1, 2, 16, 16), atol=1e-5, rtol=0)


def test_semantic_head_on_sam_reads_the_multimask_tokens():
    torch.manual_seed(0)
    model = SemanticAVSModel(num_classes=4, fusion="none", grid=4, img_size=16, mask_size=8).eval()
    seen = {}
    model.mask_decoder.output_hypernetworks_mlps[1].register_forward_hook(
        lambda m, args, out: seen.update(token1=args[0]))  # returns None: the output stays
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, tokens, _ = model.mask_logits(torch.randn(1, 2, 256, 4, 4, generator=g), torch.randn(1, 2, 128, generator=g))
    torch.testing.assert_close(tokens[:, 0], seen["token1"])
