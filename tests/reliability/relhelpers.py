"""Helpers of the reliability suite: the command lines it runs, in-process and as child processes.

Subprocesses run with the test process's intra-op thread count (2 alone, 1 under pytest-xdist), so their floats
match bit for bit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from click.testing import CliRunner, Result

from stbava.cache import open_cache
from stbava.cli import main

FRAMES = 3  # frames (and seconds of audio) per clip: enough for time to matter, cheap to encode
COUNTS = {"train": 3, "val": 2, "test": 1}
BATCH = 2  # clips per encoder forward in every extraction of the suite
SUBSET = "ms3"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Dataset:
    root: Path  # the subset folder holding the CSV (use as --data-root)

    def copy(self, dest: Path) -> Path:
        """A private copy of the whole dataset; returns its subset root."""
        shutil.copytree(self.root.parent, dest)
        return dest / self.root.name


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    threads = str(torch.get_num_threads())
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def extract_args(data_root: Path, cache: Path, *extra: str) -> list[str]:
    """The extract-features command line every run of the suite uses (tiny random encoders, CPU)."""
    return ["extract-features", "--data-root", str(data_root), "--subset", SUBSET, "--cache", str(cache),
            "--frames", str(FRAMES), "--batch-size", str(BATCH), "--device", "cpu", "--num-workers", "0",
            "--no-progress", *extra]


def train_args(cache: Path, data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny stage-two run: depth-1 ST-BAVA, batch 1, 2 epochs of 3 steps, last.pt after every step."""
    return ["train-fusion", "--cache", str(cache), "--data-root", str(data_root), "--subset", SUBSET,
            "--run-dir", str(run_dir), "--epochs", "2", "--batch-size", "1", "--depth", "1", "--lr", "1e-3",
            "--device", "cpu", "--set", "train.save_every_steps=1", "--set", "train.amp=off", *extra]


def cli(*args: str) -> Result:
    """Run the real CLI in-process (click's runner captures output; exceptions are kept, not printed)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def start(*args: str) -> subprocess.Popen:
    """``python -m stbava ARGS`` as a child process (its output collected through pipes)."""
    return subprocess.Popen([sys.executable, "-m", "stbava", *args], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stbava", *args], check=False, env=subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# The real CLI (`stbava ARGS`, in a child) stopping before encoder batch n (files in GATE: it creates at-n, then waits for
# go-n or go-all). Lets a test act while the extraction provably holds the lock, between whole batches.
_GATED_EXTRACT = """
import sys, time
from pathlib import Path
from stbava.cli import main
from stbava.pipeline.extract import features as extract
gate, real, calls = Path(sys.argv[1]), extract.encode_batch, []
def gated(*args, **kwargs):
    calls.append(1)
    (gate / f"at-{len(calls)}").touch()
    while not ((gate / f"go-{len(calls)}").exists() or (gate / "go-all").exists()):
        time.sleep(0.01)
    return real(*args, **kwargs)
extract.encode_batch = gated
main(sys.argv[2:], prog_name="stbava")
"""


@dataclass
class Gated:
    """An extraction child paused before each encoder batch until the test lets that batch go."""

    proc: subprocess.Popen
    gate: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_at(self, batch: int, during: Callable[[], object] = lambda: None, timeout: float = 120) -> None:
        """Block until the child waits before ``batch`` (1-based), calling ``during()`` meanwhile."""
        try:
            wait_for(lambda: (self.gate / f"at-{batch}").exists(), during, timeout,
                     fail=lambda: self.proc.poll() is not None, what=f"extraction paused before batch {batch}")
        except AssertionError as e:
            if self.proc.poll() is None:
                raise
            raise AssertionError(f"{e}: it exited with {self.proc.returncode}: {self.proc.communicate()[1]}") from None

    def release(self, batch: int | None = None) -> None:
        """Let ``batch`` start (every batch when None)."""
        (self.gate / (f"go-{batch}" if batch else "go-all")).touch()


@contextmanager
def gated_extraction(gate: Path, *args: str) -> Iterator[Gated]:
    """Start ``stbava ARGS`` paused at every batch (gate files in ``gate``); kill it on the way out, so a failed
    assertion never leaves a child waiting at a gate."""
    gate.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", _GATED_EXTRACT, str(gate), *args], env=subprocess_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield Gated(proc, gate)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def wait_for(cond: Callable[[], bool], during: Callable[[], object] = lambda: None, timeout: float = 120,
             fail: Callable[[], bool] = lambda: False, what: str = "condition") -> None:
    """Poll ``cond`` (calling ``during()`` each round) until it holds; AssertionError on timeout or ``fail()``."""
    deadline = time.monotonic() + timeout
    while not cond():
        during()
        if fail() or time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120, poll: float = 0.02) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; returns False when it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            hit = ready()
        except Exception:  # noqa: BLE001 - the store may be mid-creation; just poll again
            hit = False
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            return True
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    raise AssertionError(f"condition not reached within {timeout} s")


def done_count(cache: Path) -> int:
    """Clips flagged done, read while a writer is running (HDF5: without taking the file lock)."""
    if cache.suffix == ".h5":
        with h5py.File(cache, "r", locking=False) as f:
            return sum(int(np.asarray(f[s]["done"][()]).sum()) for s in ("train", "val", "test") if s in f)
    reader = open_cache(cache)
    return sum(len(reader.clip_ids(s)) for s in reader.splits())


def assert_done_clips_equal(cache: Path, ref: Path, complete: bool = False) -> int:
    """Every clip flagged done holds exactly the reference arrays; returns how many are done."""
    got, want = open_cache(cache), open_cache(ref)
    n = 0
    for split in want.splits():
        ids = got.clip_ids(split)
        if complete:
            assert ids == want.clip_ids(split)
        for cid in ids:
            np.testing.assert_array_equal(got.image_embeddings(cid), want.image_embeddings(cid), err_msg=cid)
            np.testing.assert_array_equal(got.audio_embeddings(cid), want.audio_embeddings(cid), err_msg=cid)
            n += 1
    return n


def leftovers(folder: Path) -> list[Path]:
    """Temp files of interrupted atomic writes (ours: ``.NAME.*.tmp`` / ``.NAME.partial-PID``; zarr: ``*.partial``)."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".partial-" in p.name]
