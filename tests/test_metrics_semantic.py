"""AVSS metric vs a literal re-implementation of the published ``_batch_miou_fscore`` + ``test.py`` aggregation
(REFERENCE §13): same per-class sums, then the three documented fixes (unpack, background index, padding)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from stbava.metrics import SemanticAccumulator

C = 71


# --- the published computation, written as plainly as it is described: softmax, argmax + 1, histc per frame
def ref_batch_miou_fscore(output: torch.Tensor, target: torch.Tensor, nclass: int, beta2: float = 0.3):
    """Four values, as the published function returns them: per-class IoU sums, F sums, counts, per-frame mIoU."""
    predict = torch.argmax(torch.softmax(output, 1), 1) + 1
    target = target.float() + 1
    predict = predict.float() * (target > 0).float()
    intersection = predict * (predict == target).float()
    ious, fscores, cls_count = torch.zeros(nclass), torch.zeros(nclass), torch.zeros(nclass)
    vid_miou = []
    for i in range(target.shape[0]):
        a_i = torch.histc(intersection[i], bins=nclass, min=1, max=nclass)
        a_p = torch.histc(predict[i], bins=nclass, min=1, max=nclass)
        a_l = torch.histc(target[i], bins=nclass, min=1, max=nclass)
        a_u = a_p + a_l - a_i
        iou = a_i / (2.220446049250313e-16 + a_u)
        ious += iou
        cls_count[torch.nonzero(a_u).squeeze(-1)] += 1
        prec, rec = a_i / a_p, a_i / a_l
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
        f[torch.isnan(f)] = 0.0
        fscores += f
        vid_miou.append(torch.sum(iou) / torch.sum(iou != 0).float())
    return ious, fscores, cls_count, vid_miou


def ref_test_py(batches):
    """``test.py``'s loop with the unpack fixed (four values), and its final means (``noBg`` = drop last)."""
    miou_pc, fs_pc, cls_pc = torch.zeros(C), torch.zeros(C), torch.zeros(C)
    for logits, labels in batches:
        i, f, c, _ = ref_batch_miou_fscore(logits, labels, C)
        miou_pc += i
        fs_pc += f
        cls_pc += c
    miou_pc = miou_pc / cls_pc
    miou_pc[torch.isnan(miou_pc)] = 0
    f_pc = fs_pc / cls_pc
    f_pc[torch.isnan(f_pc)] = 0
    return {"miou": miou_pc.mean().item(), "fscore": f_pc.mean().item(), "miou_noBg": miou_pc[:-1].mean().item(),
            "fscore_noBg": f_pc[:-1].mean().item(), "pc_iou": miou_pc.numpy(), "pc_f": f_pc.numpy()}


def random_batch(g: torch.Generator, n: int = 4, size: int = 12, classes: tuple[int, ...] = (0, 3, 7, 70)):
    """Frames whose labels use a few classes (the others absent), predictions noisy copies of the labels;
    frame 0 is background only."""
    cls = torch.tensor(classes)
    labels = cls[torch.randint(len(classes), (n, size, size), generator=g)]
    labels[0] = 0
    logits = torch.randn(n, C, size, size, generator=g)
    logits.scatter_add_(1, labels[:, None], torch.full((n, 1, size, size), 2.5))
    return logits, labels


def test_equals_published_on_random_batches():
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(g), random_batch(g, classes=(0, 1, 3, 50)), random_batch(g, n=2, classes=(0, 70))]
    acc = SemanticAccumulator(C)
    for lg, lb in batches:
        acc.update(lg, lb, torch.ones(lg.shape[0], dtype=torch.bool))
    ref, got = ref_test_py(batches), acc.result()
    assert got["frames"] == 10
    np.testing.assert_allclose(got["per_class_iou"], ref["pc_iou"], atol=1e-6)
    np.testing.assert_allclose(got["per_class_fscore"], ref["pc_f"], atol=1e-6)
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-6)
    assert got["fscore"] == pytest.approx(ref["fscore"], abs=1e-6)
    assert 0 < got["miou"] < 0.2  # most of the 71 classes never occur and count 0
    # fix 2: background (0) is dropped, not class 70 as published
    assert got["miou_no_background"] == pytest.approx(float(ref["pc_iou"][1:].mean()), abs=1e-6)
    assert got["fscore_no_background"] == pytest.approx(float(ref["pc_f"][1:].mean()), abs=1e-6)
    assert abs(got["miou_no_background"] - ref["miou_noBg"]) > 1e-3


def test_batching_and_merge_do_not_matter():
    g = torch.Generator().manual_seed(1)
    lg, lb = random_batch(g, n=6)
    whole, a, b = SemanticAccumulator(C), SemanticAccumulator(C), SemanticAccumulator(C)
    whole.update(lg, lb)
    a.update(lg[:2], lb[:2])
    b.update(lg[2:], lb[2:])
    merged = SemanticAccumulator.merged([pickle.loads(pickle.dumps(a)), b]).result()
    np.testing.assert_allclose(merged["per_class_iou"], whole.result()["per_class_iou"], atol=1e-12)
    assert merged["fscore"] == pytest.approx(whole.result()["fscore"], abs=1e-12)


def test_padded_frames_are_excluded():
    """Fix 3: the published metric scores padded frames (black image, background label); ``valid`` drops them."""
    g = torch.Generator().manual_seed(2)
    lg, lb = random_batch(g, n=4, classes=(0, 5))
    pad_lg = torch.randn(2, C, 12, 12, generator=g)  # whatever the model says on a black padded frame
    pad_lb = torch.zeros(2, 12, 12, dtype=torch.long)  # padded labels are background
    all_lg, all_lb = torch.cat([lg, pad_lg]), torch.cat([lb, pad_lb])
    valid = torch.tensor([True] * 4 + [False] * 2)
    acc = SemanticAccumulator(C)
    acc.update(all_lg, all_lb, valid)
    only_valid, with_pad = ref_test_py([(lg, lb)]), ref_test_py([(all_lg, all_lb)])
    assert acc.result()["miou"] == pytest.approx(only_valid["miou"], abs=1e-6)
    assert abs(acc.result()["miou"] - with_pad["miou"]) > 1e-3
    # changing what a padded frame holds changes nothing
    acc2 = SemanticAccumulator(C)
    acc2.update(torch.cat([lg, -pad_lg]), torch.cat([lb, pad_lb + 9]), valid)
    assert acc2.result() == acc.result()


def test_perfect_and_hand_made():
    lb = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
    perfect = torch.nn.functional.one_hot(lb, C).permute(0, 3, 1, 2).float()
    acc = SemanticAccumulator(C)
    acc.update(perfect, lb)
    r = acc.result()
    assert r["per_class_iou"][:2] == [1.0, 1.0] and r["classes_seen"] == 2
    assert r["miou"] == pytest.approx(2 / 71)
    # hand-made: frame 1 predicts class 1 on one of two class-1 pixels and on one background pixel
    pred = torch.tensor([[[1, 0], [1, 0]]])
    acc = SemanticAccumulator(C)
    acc.update(torch.nn.functional.one_hot(pred, C).permute(0, 3, 1, 2).float(), lb[:1])
    iou, f = acc.per_class()
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(1 / 3)
    assert f[1] == pytest.approx(1.3 * 0.5 * 0.5 / (0.3 * 0.5 + 0.5))


def test_bad_input():
    acc = SemanticAccumulator(C)
    with pytest.raises(ValueError, match="class indices"):
        acc.update(torch.zeros(1, C, 2, 2), torch.full((1, 2, 2), 71))
    with pytest.raises(ValueError, match=r"\[N,71,H,W\]"):
        acc.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert np.isnan(acc.result()["miou"])
