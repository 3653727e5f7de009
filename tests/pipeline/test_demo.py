"""`make demo`'s pipeline end to end on a handful of clips (the real demo only uses more clips and epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from stbava.cli import main
from stbava.pipeline.demo import run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_real_png(path: Path, min_side: int) -> None:
    """A complete PNG that decodes to a picture with content (not a stub, not a blank canvas)."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()  # checks the chunk CRCs: a truncated file fails here
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side, (path, im.size)
        px = np.asarray(im.convert("RGB"))
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 16, f"{path} is (nearly) a single colour"


def test_demo_pipeline_writes_results_table(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("subset: ms3\nencoder: {name: tiny}\nmodel: {depth: 1}\ntrain: {epochs: 1, batch_size: 2}\n")
    res = run_demo(tmp_path / "out", config=cfg, clips=(4, 2, 3), progress=False)
    names = [r["model"] for r in res["rows"]]
    assert names == ["ST-BAVA (full)", "same model, shuffled audio", "trained without temporal attention"]
    assert all(0.0 <= r["miou"] <= 1.0 and r["clips"] == 3 for r in res["rows"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == res["rows"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| ST-BAVA (full) |" in md and "| clear frames | drowned frames | pause frames |" in md
    truth = json.loads((tmp_path / "out" / "data" / "Multi-sources" / "synthetic_truth.json").read_text())
    assert truth["rules"] == "temporal"
    n_clear = sum(h == "clear" for k, c in truth["clips"].items() if "test" in k for h in c["hearing"])
    for r in res["rows"]:  # the breakdown counts every test frame of its condition
        assert 0.0 <= r["frame_miou"]["clear"] <= 1.0
    assert n_clear > 0
    # `all()` of an empty glob is True, so name the files: 3 similarity figures (one per test clip) + 3 overlays
    figures = sorted((tmp_path / "out" / "eval").glob("similarity_*.png"))
    assert [f.name for f in figures] == [f"similarity_syn_test_{i:04d}.png" for i in range(3)]
    assert sorted(Path(f) for f in res["figures"]) == figures
    overlays = sorted((tmp_path / "out" / "eval" / "overlays").glob("*.png"))
    assert len(overlays) == 3
    for png in figures:
        _assert_real_png(png, min_side=200)  # 5 frame tiles x 3 rows at 1.8 in and 100 dpi
    for png in overlays:
        _assert_real_png(png, min_side=64)
    # a second run reuses the data and the finished cache and runs, and the CLI prints the table
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "shuffled audio" in out.output


def test_installed_demo_defaults_are_configs_demo_yaml(tmp_path):
    """Without a source checkout's configs/ the demo falls back to built-in settings: they must be the same."""
    from stbava.config import load_config
    from stbava.pipeline.demo import DEMO_CONFIG, demo_config

    assert demo_config(tmp_path / "absent.yaml") == load_config(DEMO_CONFIG)
