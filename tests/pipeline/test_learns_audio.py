"""The product's central claim, end to end on a small synthetic set: stage two learns to use the audio.

On the synthetic MS3 data only the audio tells which visible objects sound, so a model that ignores it scores
the same with another clip's audio. It guards against the failure of the first demo recipe
(own and shuffled audio scored identically). Measured with these settings (2-frame clips, the per-second
"independent" rules, 168 steps, one torch thread): own audio mIoU 0.495 / F 0.714, shuffled 0.190 / 0.435, in
under half the time of 5-frame clips (extraction 12 s vs 32 s, training 159 s vs 332 s on a busy 2-core machine),
which gave 0.442 / 0.691 vs 0.215 / 0.467 (with ``model.center_audio`` off: 0.431 / 0.577 vs 0.276 / 0.428). Fewer steps
do not do: 64 steps of 32 clips gave 0.209 vs 0.188.
"""

from __future__ import annotations

from stbava.config import EncoderConfig, load_config
from stbava.data.synthetic import write_synthetic
from stbava.pipeline.evaluate.loop import run_eval
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.stage2 import train_fusion

FRAMES = 2  # own / shuffled mIoU at the same 168 steps: 5 frames 0.442 / 0.215, 3: 0.415 / 0.215, 2: 0.495 / 0.190


def test_stage_two_learns_to_use_the_audio(tmp_path):
    root = write_synthetic(tmp_path / "data", "ms3", {"train": 48, "val": 4, "test": 16}, seed=7, rules="independent",
                           frames=FRAMES)
    cache = tmp_path / "c.zarr"
    run_extraction(root, "ms3", cache, "zarr", EncoderConfig(), batch_size=8, device="cpu", progress=False,
                   num_workers=0, frames=FRAMES)
    cfg = load_config(None, {"subset": "ms3", "frames": FRAMES, "model": {"depth": 2},
                             "train": {"epochs": 14, "batch_size": 4, "lr": 3e-4, "val_every": 100}})
    train_fusion(cfg, cache, root, tmp_path / "run", device="cpu", progress=False)
    ckpt = tmp_path / "run" / "last.pt"
    own, _ = run_eval(ckpt, root, "test", None, cache=cache, device="cpu", progress=False)
    shuffled, _ = run_eval(ckpt, root, "test", None, cache=cache, device="cpu", shuffle_audio=True, progress=False)
    assert own.miou > shuffled.miou + 0.1 and own.fscore > shuffled.fscore + 0.1, (own.miou, shuffled.miou,
                                                                                   own.fscore, shuffled.fscore)
