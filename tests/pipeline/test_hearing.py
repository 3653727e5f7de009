"""The hearing breakdown groups AVSBench frame IoUs by the synthetic truth file's conditions."""

from __future__ import annotations

import json

import pytest
import torch

from stbava.data.synthetic import TRUTH_FILE
from stbava.pipeline.core.sources import Batch
from stbava.pipeline.evaluate.hearing import HearingBreakdown


def _truth(root, clips):
    (root / TRUTH_FILE).write_text(json.dumps({"rules": "temporal", "seed": 0, "clips": clips}))


def test_frame_ious_by_condition_and_kind(tmp_path):
    _truth(tmp_path, {
        "a": {"classes": ["x", "y"], "sounding": [[1, 0]] * 3, "hearing": ["clear", "drowned", "pause"]},
        "b": {"classes": ["x", "y"], "sounding": [[1, 0], [0, 1], [0, 1]], "hearing": ["clear"] * 3},
    })
    masks = torch.zeros(2, 3, 224, 224)
    masks[:, :, :112] = 1  # every frame: the top half sounds
    logits = torch.full((2, 3, 224, 224), -5.0)
    logits[0, 0, :112] = 5  # a: clear frame exact (IoU 1), drowned frame empty (0)
    logits[0, 2, :56] = 5  # a: paused frame, a quarter predicted (IoU 0.5)
    logits[1, :, :] = 5  # b: everything predicted (IoU 0.5), its last frame not annotated
    valid = torch.tensor([[True, True, True], [True, True, False]])
    h = HearingBreakdown(tmp_path)
    h(Batch(["a", "b"], masks, valid), logits)
    got = h.summary()
    assert got["drowned"] == {"miou": pytest.approx(0.0, abs=1e-6), "frames": 1}
    assert got["pause"]["miou"] == pytest.approx(0.5, abs=1e-6)
    assert got["clear"] == {"miou": pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-6), "frames": 3}
    assert got["steady"]["frames"] == 3 and got["handover"] == {"miou": pytest.approx(0.5, abs=1e-6), "frames": 2}


def test_a_clip_without_annotated_frames_adds_nothing(tmp_path):
    _truth(tmp_path, {"a": {"classes": ["x", "y"], "sounding": [[1, 0]] * 2, "hearing": ["clear", "clear"]},
                      "b": {"classes": ["x", "y"], "sounding": [[1, 0]] * 2, "hearing": ["drowned", "clear"]}})
    masks = torch.ones(2, 2, 224, 224)
    logits = torch.full((2, 2, 224, 224), 5.0)  # every frame exact
    h = HearingBreakdown(tmp_path)
    h(Batch(["a", "b"], masks, torch.tensor([[True, True], [False, False]])), logits)
    assert h.summary() == {"clear": {"miou": pytest.approx(1.0), "frames": 2},
                           "steady": {"miou": pytest.approx(1.0), "frames": 2}}


def test_data_without_truth_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / TRUTH_FILE)):
        HearingBreakdown(tmp_path)


def test_ranks_parts_are_merged(tmp_path):
    _truth(tmp_path, {})
    h = HearingBreakdown(tmp_path)
    h.absorb([{"clear": [1.0], "drowned": [0.0]}, {"clear": [0.5, 0.0]}])
    assert h.summary() == {"clear": {"miou": pytest.approx(0.5), "frames": 3}, "drowned": {"miou": 0.0, "frames": 1}}
