"""One CLI style: every shared option means the same on every command, and the long-running ones take
--no-progress. The options are read from the ``stbava`` click group itself; -q and --no-progress are also run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stbava.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Commands that run for a while and show tqdm bars; every other command is listed in QUICK with its reason,
# so a new command has to be put in one of the two.
LONG_RUNNING = {"extract-features", "train-fusion", "finetune-adapters", "eval", "zero-shot", "predict",
                "experiment", "demo", "check-data", "synth"}
QUICK = {"plot": "draws one figure", "import-official": "converts one file",
         "app": "a server whose requests never show bars"}
SHARED = ("--verbose", "--quiet", "--progress", "--device", "--seed", "--set")


def _options(cmd: click.Command) -> dict[str, click.Option]:
    """Every option of ``cmd`` by each of its long names (hidden aliases included)."""
    return {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts
            if o.startswith("--")}


def _info(p: click.Option) -> str:
    """What a user sees of an option: names, type, default, help, flag-ness (click's own description)."""
    return json.dumps(p.to_info_dict(), sort_keys=True, default=str)


def test_every_command_is_classified_and_takes_the_logging_options():
    assert set(main.commands) == LONG_RUNNING | set(QUICK)
    for name, cmd in main.commands.items():
        opts = _options(cmd)
        assert {"--verbose", "--quiet"} <= set(opts), name
        assert opts["--verbose"].opts == ["-v", "--verbose"] and opts["--quiet"].opts == ["-q", "--quiet"], name
        assert ("--progress" in opts) == (name in LONG_RUNNING), name
        if name in LONG_RUNNING:
            assert opts["--progress"].secondary_opts == ["--no-progress"] and opts["--progress"].default is True


@pytest.mark.parametrize("option", SHARED)
def test_a_shared_option_is_the_same_everywhere(option):
    seen = {name: _info(_options(cmd)[option]) for name, cmd in main.commands.items() if option in _options(cmd)}
    assert len(seen) >= 2, f"{option} is on {list(seen)} only"
    assert len(set(seen.values())) == 1, {n: json.loads(i) for n, i in seen.items()}


def test_out_is_a_folder_or_a_file_and_says_which():
    kinds = {}
    for name, cmd in main.commands.items():
        out = _options(cmd).get("--out")
        if out is None:
            continue
        assert isinstance(out.type, click.Path) and out.type.file_okay != out.type.dir_okay, name
        kinds[name] = "dir" if out.type.dir_okay else "file"
        assert out.help.startswith("Output folder: " if kinds[name] == "dir" else "Output file: "), name
    assert kinds == {"train-fusion": "dir", "finetune-adapters": "dir", "experiment": "dir", "predict": "dir",
                     "demo": "dir", "eval": "file", "zero-shot": "file", "import-official": "file",
                     "plot": "file"}
    for name in ("train-fusion", "finetune-adapters"):  # the old name keeps working, out of the help
        assert _options(main.commands[name])["--run-dir"].hidden


def test_option_errors_are_usage_errors(tmp_path):
    runner = CliRunner()
    both = runner.invoke(main, ["synth", str(tmp_path / "d"), "--subset", "ms3", "-v", "-q"])
    assert both.exit_code == 2 and "exclude each other" in both.output and not (tmp_path / "d").exists()
    common = ["train-fusion", "--cache", str(tmp_path), "--data-root", str(tmp_path)]
    clash = runner.invoke(main, [*common, "--out", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b")])
    assert clash.exit_code == 2 and "--run-dir (its old name)" in clash.output
    missing = runner.invoke(main, common)
    assert missing.exit_code == 2 and "Missing option '--out'" in missing.output
    bad_set = runner.invoke(main, [*common, "--out", str(tmp_path / "a"), "--set", "train.epochs"])
    assert bad_set.exit_code == 2 and "section.key=value" in bad_set.output


def _synth(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """A real ``stbava synth`` of 3 one-frame clips in a fresh process (its own logging set-up)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stbava", "synth", str(tmp_path / "d"), "--subset", "ms3",
                           "--clips-per-split", "1", "--frames", "1", *flags], capture_output=True, text=True,
                          env=env, timeout=60, check=True)


def test_quiet_and_no_progress_silence_stderr(tmp_path):
    plain = _synth(tmp_path)
    assert "INFO stbava.data.synthetic: wrote 3 synthetic ms3 clips" in plain.stderr
    assert "synth:" in plain.stderr and "clip/s]" in plain.stderr  # the tqdm bar
    no_bar = _synth(tmp_path, "--no-progress")
    assert "INFO stbava.data.synthetic" in no_bar.stderr and "synth:" not in no_bar.stderr
    quiet = _synth(tmp_path, "-q")
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("wrote 3 ms3 clips")  # the command's own result still prints
