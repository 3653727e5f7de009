"""`make demo`'s pipeline end to end on a handful of clips (the real demo only uses more clips and epochs)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from stbava.cli import main
from stbava.pipeline.demo import run_demo


def test_demo_pipeline_writes_results_table(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("subset: ms3\nencoder: {name: tiny}\nmodel: {depth: 1}\ntrain: {epochs: 1, batch_size: 2}\n")
    res = run_demo(tmp_path / "out", config=cfg, clips=(4, 2, 3), progress=False)
    names = [r["model"] for r in res["rows"]]
    assert names == ["ST-BAVA (full)", "same model, shuffled audio", "trained without temporal attention"]
    assert all(0.0 <= r["miou"] <= 1.0 and r["clips"] == 3 for r in res["rows"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == res["rows"]
    assert "| ST-BAVA (full) |" in (tmp_path / "out" / "results.md").read_text()
    assert len(res["figures"]) == 3 and all((tmp_path / "out").glob("eval/similarity_*.png"))
    assert len(list((tmp_path / "out" / "eval" / "overlays").glob("*.png"))) == 3
    # a second run reuses the data and the finished cache and runs, and the CLI prints the table
    out = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "shuffled audio" in out.output
