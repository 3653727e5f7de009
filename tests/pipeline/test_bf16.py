"""bf16 on CPU: the detector's answer decides extraction, training and eval, and is recorded by each.

The CPU's report is simulated (a written cpuinfo file) and so is the matmul timing, so every test means the
same on every machine; the real detector is checked only for its shape and its per-process cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stbava import bf16
from stbava.cache import open_cache
from stbava.checkpoint import read_checkpoint
from stbava.config import ConfigError, load_config
from stbava.data.clips import load_clips
from stbava.data.io import read_frame
from stbava.data.synthetic import write_synthetic
from stbava.data.transforms import frames_to_sam_input
from stbava.encoders.image import build_image_encoder
from stbava.pipeline.evaluate.loop import run_eval
from stbava.pipeline.extract.features import run_extraction
from stbava.pipeline.train.stage2 import train_fusion

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_XEON = "processor\t: 0\nmodel name\t: Intel Xeon E5-2686\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.fixture
def simulated_cpu(tmp_path, monkeypatch):
    """``use(cpuinfo_text, speedup)``: the detector then sees that CPU report and that matmul timing."""
    calls = []

    def use(text: str, speedup: float) -> list[bf16.Bf16Check]:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(bf16, "measure_speedup", lambda n=bf16.MATMUL_N: speedup)

        def detector() -> bf16.Bf16Check:
            calls.append(bf16.check_cpu(path))
            return calls[-1]

        monkeypatch.setattr(bf16, "cpu_bf16", detector)
        return calls

    return use


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn"), "ms3", {"train": 1, "test": 1}, seed=3)  # no val: no validation pass


def test_cpuinfo_flags_decide_with_the_timing(tmp_path, monkeypatch):
    p = tmp_path / "cpuinfo"
    monkeypatch.setattr(bf16, "measure_speedup", lambda n=bf16.MATMUL_N: 2.8)
    p.write_text(EPYC)
    c = bf16.check_cpu(p)
    assert (c.cpu, c.flags, c.native) == ("AMD EPYC 9R14", ("avx512_bf16",), True)
    p.write_text(OLD_XEON)
    assert not bf16.check_cpu(p).native  # no flag: refused even though the (simulated) timing is fast
    p.write_text(EPYC)
    monkeypatch.setattr(bf16, "measure_speedup", lambda n=bf16.MATMUL_N: 0.5)
    assert not bf16.check_cpu(p).native  # the flag without the speed: refused too


def test_the_real_detector_is_measured_once_per_process(monkeypatch):
    timings = []

    def timing(n=bf16.MATMUL_N):
        timings.append(n)
        return 3.0

    monkeypatch.setattr(bf16, "measure_speedup", timing)
    bf16.cpu_bf16.cache_clear()
    try:
        first, second = bf16.cpu_bf16(), bf16.cpu_bf16()
    finally:
        bf16.cpu_bf16.cache_clear()  # the next caller measures the real CPU
    assert first is second and timings == [bf16.MATMUL_N] and first.speedup == 3.0


def test_a_cpu_without_bf16_refuses_with_the_measured_slowdown(simulated_cpu, data_root, tmp_path):
    calls = simulated_cpu(OLD_XEON, speedup=0.07)  # the ~15x the ENV-NOTES machine measured
    with pytest.raises(ConfigError) as e:
        run_extraction(data_root, "ms3", tmp_path / "c.zarr", amp="bf16", device="cpu", progress=False)
    msg = str(e.value)
    assert "--amp bf16 refused" in msg and "14.3x slower" in msg and "Intel Xeon E5-2686" in msg
    assert "Use --amp off" in msg and not (tmp_path / "c.zarr").exists()
    cfg = load_config(None, {"train": {"amp": "bf16", "max_steps": 1}})
    with pytest.raises(ConfigError, match=r"train.amp: bf16 refused .* 14.3x slower"):
        _fit_refused(cfg, tmp_path)
    assert len(calls) == 2 and not (tmp_path / "run" / "last.pt").exists()


def _fit_refused(cfg, tmp_path):
    """The training loop's own check, on a tiny net (no cache needed: it refuses before the first step)."""
    from stbava.pipeline.core.net import build_fusion_net
    from stbava.pipeline.train.loop import fit, trainable_predicate
    from stbava.pipeline.train.stage2 import FUSION_PREFIXES

    net = build_fusion_net(load_config(None, {"frames": 2, "encoder": {"name": "tiny"}, "model": {"depth": 1}}))
    fit(cfg, net, [], None, tmp_path / "run", kind="fusion", trainable=trainable_predicate(FUSION_PREFIXES),
        fingerprint=None, device=torch.device("cpu"), progress=False)


def test_native_bf16_runs_in_both_stages_and_is_recorded(simulated_cpu, data_root, tmp_path):
    calls = simulated_cpu(EPYC, speedup=2.8)  # this machine's CPU, whatever CPU runs the test
    cache = tmp_path / "bf16.zarr"
    run_extraction(data_root, "ms3", cache, amp="bf16", device="cpu", progress=False)
    reader = open_cache(cache)
    assert reader.fingerprint["numerics"]["image_amp"] == "bf16"  # compared on resume
    numerics = reader.manifest.info["numerics"]
    assert numerics["dtype"] == "bfloat16" and numerics["cpu_bf16"]["flags"] == ["avx512_bf16"]
    assert numerics["cpu_bf16"]["speedup"] == 2.8
    clip = load_clips(data_root, "ms3", ["test"])[0]
    with torch.inference_mode():  # the same frame through the float32 encoder
        want = build_image_encoder("tiny", seed=0)(frames_to_sam_input([read_frame(clip.frame_paths[0])], 256))[0]
    got = torch.from_numpy(reader.image_embeddings(clip.id)[0].astype(np.float32))
    assert 1e-4 < float((got - want).norm() / want.norm()) < 0.05  # bf16 ran: values moved by its rounding only

    cfg = load_config(None, {"model": {"depth": 1}, "train": {"amp": "bf16", "epochs": 1, "max_steps": 1}})
    train_fusion(cfg, cache, data_root, tmp_path / "run", device="cpu", progress=False)
    trained = read_checkpoint(tmp_path / "run" / "best.pt")["extra"]["numerics"]
    assert trained["dtype"] == "bfloat16" and trained["cpu_bf16"]["cpu"] == "AMD EPYC 9R14"
    _, report = run_eval(tmp_path / "run" / "best.pt", data_root, "test", tmp_path / "r.json", cache=cache,
                         device="cpu", progress=False)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["numerics"]["dtype"] == "float32" and saved["train_numerics"]["dtype"] == "bfloat16"
    assert report["numerics"] == saved["numerics"]
    assert len(calls) == 2  # extraction and training each asked the detector; float32 eval did not
