"""AVSBench metrics: the worked example of REFERENCE §8.3, edge cases, and a slow re-implementation of the
official per-frame / per-threshold loops (``mask_iou``, ``_eval_pr``, ``Eval_Fmeasure``) as the oracle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from stbava.metrics import (
    MetricAccumulator,
    PooledMetrics,
    f_curves,
    f_score,
    frame_ious,
    mask_iou,
    thresholds,
)

TOL = 1e-6

F1 = (np.array([[2, -1], [0.5, 0]], np.float32), np.array([[1, 1], [0, 0]], np.float32))
F2 = (np.array([[-2, -2], [1, -2]], np.float32), np.zeros((2, 2), np.float32))
F3 = (np.array([[-1, -3], [-3, -3]], np.float32), np.array([[1, 0], [0, 0]], np.float32))


def batch(*frames):
    return torch.from_numpy(np.stack([f[0] for f in frames])), torch.from_numpy(np.stack([f[1] for f in frames]))


# --- the official computation, written as plainly as the published loops (sigmoid and linspace from torch,
# --- as the official code calls them; everything else numpy float32, one frame and one threshold at a time)
def ref_mask_iou(logits: torch.Tensor, gt: np.ndarray) -> float:
    pred = (torch.sigmoid(logits).numpy() > 0.5).astype(np.float32)
    gt = gt.astype(np.float32)
    n, h, w = pred.shape
    total = np.float32(0)
    for i in range(n):
        if gt[i].sum() == 0:
            inter = ((1 - gt[i]) * (1 - pred[i])).sum(dtype=np.float32)
            union = np.float32(h * w)
        else:
            inter = (pred[i] * gt[i]).sum(dtype=np.float32)
            union = np.maximum(pred[i], gt[i]).sum(dtype=np.float32)
        total += inter / (union + np.float32(1e-7))
    return float(total / n)


def ref_f_score(logits: torch.Tensor, gt: np.ndarray) -> float:
    p = torch.sigmoid(logits).numpy()
    th = torch.linspace(0, 1 - 1e-10, 255).numpy()
    gt = gt.astype(np.float32)
    avg_f, img_num, score = 0.0, 0, np.zeros(255, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(p.shape[0]):
            if gt[i].mean() == 0.0:
                continue
            prec, rec = np.zeros(255, np.float32), np.zeros(255, np.float32)
            for j in range(255):
                y = (p[i] >= th[j]).astype(np.float32)
                tp = (y * gt[i]).sum(dtype=np.float32)
                prec[j] = tp / (y.sum(dtype=np.float32) + np.float32(1e-20))
                rec[j] = tp / (gt[i].sum(dtype=np.float32) + np.float32(1e-20))
            f = np.float32(1.3) * prec * rec / (np.float32(0.3) * prec + rec)
            f[np.isnan(f)] = 0  # the official `f[f != f] = 0`
            avg_f = avg_f + f
            img_num += 1
            score = avg_f / img_num
    return float(score.max())


# --- REFERENCE §8.3 ----------------------------------------------------------------------------------------
def test_worked_example_per_frame():
    lg, gt = batch(F1, F2, F3)
    np.testing.assert_allclose(frame_ious(lg, gt), [1 / 3, 0.75, 0.0], atol=TOL)
    curves = f_curves(lg, gt)
    assert curves.shape == (2, 255)  # f2 (empty GT) skipped
    th = thresholds()
    s = torch.sigmoid(torch.tensor([-1.0, 0.0, 0.5, 2.0, -3.0]))

    def piecewise(bounds, values):
        out = np.zeros(255)
        for i, t in enumerate(th):
            out[i] = next((v for b, v in zip(bounds, values) if t <= b), 0.0)
        return out

    f1 = piecewise(s[[0, 1, 2, 3]], [0.565217, 0.361111, 0.5, 0.8125])
    f3 = piecewise(s[[4, 0]], [0.302326, 1.0])
    np.testing.assert_allclose(curves[0], f1, atol=TOL)
    np.testing.assert_allclose(curves[1], f3, atol=TOL)


@pytest.mark.parametrize(
    "frames, miou, fscore",
    [((F1, F2), 0.5416667, 0.8125), ((F1, F2, F3), 0.3611111, 0.7826087), ((F2,), 0.75, 0.0)],
    ids=["A", "B", "C"],
)
def test_worked_example_batches(frames, miou, fscore):
    lg, gt = batch(*frames)
    assert mask_iou(lg, gt) == pytest.approx(miou, abs=TOL)
    assert f_score(lg, gt) == pytest.approx(fscore, abs=TOL)
    assert mask_iou(lg, gt) == pytest.approx(ref_mask_iou(lg, gt.numpy()), abs=1e-7)
    assert f_score(lg, gt) == pytest.approx(ref_f_score(lg, gt.numpy()), abs=1e-7)


def test_worked_example_dataset_is_mean_of_batches():
    acc = MetricAccumulator()
    acc.update(*batch(F1, F2))
    acc.update(*batch(F2))
    assert acc.batches == 2
    assert acc.miou == pytest.approx(0.6458333, abs=TOL)
    assert acc.fscore == pytest.approx(0.40625, abs=TOL)
    # batch B's F is the max of the mean curve, not the mean of per-frame maxima (0.90625)
    assert f_score(*batch(F1, F2, F3)) != pytest.approx(0.90625, abs=1e-3)


# --- edge cases ----------------------------------------------------------------------------------------------
def _blob_gt(n=3, size=16):
    gt = np.zeros((n, size, size), np.float32)
    for i in range(n):
        gt[i, 2 + i: 9 + i, 3: 8 + 2 * i] = 1
    return gt


def test_all_correct():
    gt = _blob_gt()
    lg = np.where(gt > 0, 10.0, -10.0).astype(np.float32)
    assert mask_iou(lg, gt) == pytest.approx(1.0, abs=TOL)
    assert f_score(lg, gt) == pytest.approx(1.0, abs=TOL)
    np.testing.assert_allclose(frame_ious(lg, gt), 1.0, atol=TOL)


def test_all_wrong():
    gt = _blob_gt(n=1)
    lg = np.where(gt > 0, -10.0, 10.0).astype(np.float32)
    assert mask_iou(lg, gt) == pytest.approx(0.0, abs=TOL)
    # only the thresholds below sigmoid(-10) call everything positive: precision = GT fraction, recall = 1
    a = gt.mean()
    assert f_score(lg, gt) == pytest.approx(1.3 * a / (0.3 * a + 1), abs=TOL)
    assert f_score(lg, gt) == pytest.approx(ref_f_score(torch.from_numpy(lg), gt), abs=1e-7)


def test_empty_gt_rules():
    gt = np.zeros((2, 8, 8), np.float32)
    empty_pred = np.full((2, 8, 8), -5.0, np.float32)
    assert mask_iou(empty_pred, gt) == pytest.approx(1.0, abs=TOL)  # all background correctly predicted
    assert f_score(empty_pred, gt) == 0.0  # every frame skipped -> the initial zero curve
    full_pred = np.full((2, 8, 8), 5.0, np.float32)
    assert mask_iou(full_pred, gt) == pytest.approx(0.0, abs=TOL)
    half = empty_pred.copy()
    half[:, :4] = 5.0
    np.testing.assert_allclose(frame_ious(half, gt), [0.5, 0.5], atol=TOL)


def test_strict_half_threshold_and_nan_logits():
    gt = np.ones((1, 2, 2), np.float32)
    lg = np.zeros((1, 2, 2), np.float32)  # sigmoid(0) = 0.5 is NOT foreground for IoU
    assert mask_iou(lg, gt) == pytest.approx(0.0, abs=TOL)
    assert f_score(lg, gt) == pytest.approx(1.0, abs=TOL)  # but 0.5 >= th for F's low thresholds
    lg = np.array([[[np.nan, 3.0], [3.0, 3.0]]], np.float32)  # NaN compares False in both official functions
    t = torch.from_numpy(lg)
    assert mask_iou(lg, gt) == pytest.approx(ref_mask_iou(t, gt), abs=1e-7)
    assert f_score(lg, gt) == pytest.approx(ref_f_score(t, gt), abs=1e-7)


@pytest.mark.parametrize("n, size", [(10, 224), (70, 20)], ids=["avsbench-size", "chunked-frames"])
def test_random_batch_matches_official_loops(n, size):
    rng = np.random.default_rng(n)
    gt = (rng.random((n, size, size)) < rng.random((n, 1, 1)) * 0.5).astype(np.float32)
    gt[::4] = 0  # some empty-GT frames
    lg = (rng.normal(0, 2, (n, size, size)) + 2 * gt - 1).astype(np.float32)
    lg[0, :5, :5] = 0.0  # exactly 0.5 after sigmoid
    th = thresholds()[1:-1].double()
    lg[1].reshape(-1)[:253] = torch.logit(th).float().numpy()  # probabilities on (or an ulp beside) thresholds
    t = torch.from_numpy(lg)
    assert mask_iou(t, gt) == pytest.approx(ref_mask_iou(t, gt), abs=TOL)
    assert f_score(t, gt) == pytest.approx(ref_f_score(t, gt), abs=TOL)


def test_input_types_and_validation():
    lg, gt = batch(F1, F2, F3)
    assert mask_iou(lg.numpy(), gt.numpy().astype(bool)) == mask_iou(lg, gt)
    assert f_score(lg.double(), gt.to(torch.uint8)) == f_score(lg, gt)
    with pytest.raises(ValueError, match="binary"):
        mask_iou(lg, gt * 0.5)
    with pytest.raises(ValueError, match="shape"):
        f_score(lg, gt[:2])
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        mask_iou(lg[0], gt[0])
    with pytest.raises(ValueError, match="empty"):
        mask_iou(lg[:0], gt[:0])


def test_accumulator_clip_stack_counts_each_clip_as_a_batch():
    rng = np.random.default_rng(0)
    gt = (rng.random((3, 5, 12, 12)) < 0.3).astype(np.float32)
    gt[1] = 0  # a silent clip: F 0.0, as AVSBench
    lg = rng.normal(0, 2, (3, 5, 12, 12)).astype(np.float32)
    stacked, one_by_one = MetricAccumulator(), MetricAccumulator()
    values = stacked.update(torch.from_numpy(lg), torch.from_numpy(gt))
    for b in range(3):
        one_by_one.update(lg[b], gt[b])
    assert stacked.batches == 3 and values[1][1] == 0.0
    assert stacked.miou == pytest.approx(one_by_one.miou, abs=1e-12)
    assert stacked.fscore == pytest.approx(np.mean([f_score(lg[b], gt[b]) for b in range(3)]), abs=1e-12)
    assert np.isnan(MetricAccumulator().miou) and np.isnan(MetricAccumulator().fscore)


def test_pooled_metrics_are_batch_size_independent():
    rng = np.random.default_rng(1)
    gt = (rng.random((12, 16, 16)) < 0.4).astype(np.float32)
    gt[[2, 7]] = 0
    lg = (rng.normal(0, 2, (12, 16, 16)) + 2 * gt - 1).astype(np.float32)
    whole = PooledMetrics()
    whole.update(lg, gt)
    assert whole.frames == 12 and whole.f_frames == 10
    # pooled over the split = the official loops run on all 12 frames as one batch (oracle, not this module)
    t = torch.from_numpy(lg)
    assert whole.miou == pytest.approx(ref_mask_iou(t, gt), abs=1e-6)
    assert whole.fscore == pytest.approx(ref_f_score(t, gt), abs=1e-6)
    pieces = [PooledMetrics() for _ in range(3)]
    for p, (s, e) in zip(pieces, [(0, 1), (1, 5), (5, 12)]):
        p.update(lg[s:e], gt[s:e])
    merged = PooledMetrics.merged(pickle.loads(pickle.dumps(pieces)))
    assert merged.miou == pytest.approx(whole.miou, abs=1e-12)
    assert merged.fscore == pytest.approx(whole.fscore, abs=1e-12)
    stacked = PooledMetrics()
    stacked.update(lg.reshape(3, 4, 16, 16), gt.reshape(3, 4, 16, 16))
    assert stacked.fscore == pytest.approx(whole.fscore, abs=1e-12)
    # the AVSBench value does depend on the batching
    acc = MetricAccumulator()
    acc.update(lg.reshape(3, 4, 16, 16), gt.reshape(3, 4, 16, 16))
    assert acc.fscore != pytest.approx(whole.fscore, abs=1e-4)


def test_pooled_empty_states():
    p = PooledMetrics()
    assert np.isnan(p.miou) and np.isnan(p.fscore)
    p.update(np.full((2, 4, 4), -3.0, np.float32), np.zeros((2, 4, 4), np.float32))
    assert p.fscore == 0.0 and p.miou == pytest.approx(1.0, abs=TOL)
