"""Configs: every shipped YAML loads, unknown keys/types are errors; the CLI reference is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from stbava.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.subset in ("s4", "ms3", "avss")


def test_paper_recipes():
    s4, ms3 = load_config(ROOT / "configs/s4.yaml"), load_config(ROOT / "configs/ms3.yaml")
    assert (s4.model.depth, ms3.model.depth) == (5, 7)
    assert s4.train.epochs == ms3.train.epochs == 250 and s4.train.lr == 1e-4


def test_unknown_key_and_wrong_type_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  detph: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'detph'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be"):
        load_config(None, {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="spatial_mode"):
        load_config(None, {"model": {"spatial_mode": "diagonal"}})


def test_override_parsing():
    assert parse_override("model.depth=7") == {"model": {"depth": 7}}
    cfg = load_config(ROOT / "configs/ms3.yaml", {"train": {"lr": 0.001}})
    assert cfg.train.lr == 0.001 and cfg.model.depth == 7


def test_cli_reference_is_current():
    from stbava.docs import cli_reference

    assert (ROOT / "docs" / "CLI.md").read_text() == cli_reference(), "run: python -m stbava.docs > docs/CLI.md"


def test_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:8]
    cmds = [ln.split("#")[0].strip() for ln in head if ln.startswith("make ")]
    assert cmds == ["make demo", "make test"]


def test_fusion_is_a_module_name_and_the_former_boolean_still_loads(tmp_path):
    assert load_config(None).model.fusion == "stbava"
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  fusion: false\n")  # the former decoder-only switch
    assert load_config(old).model.fusion == "none"
    assert load_config(None, parse_override("model.fusion=true")).model.fusion == "stbava"
    assert load_config(None, parse_override("model.fusion=han")).model.fusion == "han"
    with pytest.raises(ConfigError, match=r"model.fusion must be one of stbava\|tpavi"):
        load_config(None, {"model": {"fusion": "bava2"}})


def test_exponent_floats_that_yaml_1_1_reads_as_strings_are_floats():
    """PyYAML (YAML 1.1) reads ``1e-3`` as the string '1e-3': `--set train.lr=1e-3` was refused with
    "lr must be <class 'float'>, got '1e-3'". Such strings are read as floats for float fields only."""
    raw = parse_override("train.lr=1e-3")
    assert raw == {"train": {"lr": "1e-3"}}  # what PyYAML gives: a string
    assert load_config(None, raw).train.lr == 0.001
    assert load_config(None, {"train": {"lr": "5E-4", "warmup_steps": 3}}).train.lr == 0.0005
    with pytest.raises(ConfigError, match="lr must be"):
        load_config(None, {"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="warmup_steps must be"):
        load_config(None, {"train": {"warmup_steps": "1e3"}})  # an int field stays strict
