"""The writer lock under real contention: processes started together, a SIGKILLed holder, odd files.

Every contender here runs while the holder provably holds the lock (it waits on an Event or a signal before
letting go), so each outcome is forced, never a matter of timing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stbava.cache import CacheError, create_cache, open_cache
from stbava.cache.lock import ACQUIRE_TIMEOUT_S, WriterLock

T, EMB = 2, (256, 2, 2)
LAYOUT = {"fingerprint": {"image": "tiny", "frames": T}, "clips": [("a", "train"), ("b", "val")], "frames": T,
          "emb_shape": EMB}


def arrays(cid: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ord(cid))
    return rng.standard_normal((T, *EMB)).astype(np.float16), rng.standard_normal((T, 128)).astype(np.float32)


def _contender(path: str, start: mp.synchronize.Barrier, done: mp.synchronize.Event, out: mp.Queue) -> None:
    """Wait for every contender, then try to become the writer; a winner writes one clip and holds on."""
    start.wait(timeout=120)
    try:
        writer = create_cache(path, "zarr", **LAYOUT)
    except CacheError as e:
        out.put(("refused", os.getpid(), str(e)))
        return
    out.put(("won", os.getpid(), ""))
    with writer:
        writer.write_clip("a", *arrays("a"))
        done.wait(timeout=120)  # keep the lock until every other contender has been answered


def test_contenders_started_together_exactly_one_becomes_the_writer(tmp_path):
    path, n = tmp_path / "c.zarr", 3
    ctx = mp.get_context("spawn")  # a clean interpreter each, no threads inherited from pytest
    start, done, out = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(path), start, done, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=180) for _ in range(n)]  # every answer arrives while the winner still holds
    finally:
        done.set()
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * n
    won = [pid for kind, pid, _ in results if kind == "won"]
    refused = [msg for kind, _, msg in results if kind == "refused"]
    assert len(won) == 1 and len(refused) == n - 1, results
    for msg in refused:
        assert f"cache {path} is being written by pid {won[0]} on " in msg, msg
        assert f"lock file {path}.lock" in msg and "wait for it to finish" in msg, msg
    assert sorted(os.listdir(tmp_path)) == ["c.zarr"]  # the winner deleted its lock file on close
    np.testing.assert_array_equal(open_cache(path).audio_embeddings("a"), arrays("a")[1])


_HOLDER = """
import os, sys, time
from stbava.cache import create_cache
sys.path.insert(0, {test_dir!r})
from test_lock import LAYOUT, arrays
w = create_cache({path!r}, "zarr", **LAYOUT)
w.write_clip("a", *arrays("a"))
worker = os.fork()  # like a DataLoader worker: a child that outlives a SIGKILL of its parent for a while
if worker == 0:
    time.sleep(600)
    os._exit(0)
print("held", worker, flush=True)
time.sleep(600)
"""


def test_lock_of_a_sigkilled_holder_is_free_at_once(tmp_path):
    path = tmp_path / "c.zarr"
    lock = tmp_path / "c.zarr.lock"
    code = textwrap.dedent(_HOLDER.format(test_dir=os.path.dirname(__file__), path=str(path)))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        line = holder.stdout.readline().split()
        assert line[:1] == ["held"], holder.stderr.read()
        worker = int(line[1])
        with pytest.raises(CacheError, match=rf"being written by pid {holder.pid} on "):
            create_cache(path, "zarr", **LAYOUT)  # really held: a writer is refused
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        assert holder.returncode == -signal.SIGKILL
        assert lock.read_text().split()[0] == str(holder.pid)  # the dead holder's file is still there, untouched
        os.kill(worker, 0)  # the forked child still runs: it must not keep the lock alive

        t0 = time.perf_counter()
        taken = WriterLock(path)
        taken.acquire()  # first try: no stale-lock detection, no waiting
        elapsed = time.perf_counter() - t0
        taken.release()
    finally:
        if worker is not None:  # first: it shares the holder's output pipes, which communicate() drains
            os.kill(worker, signal.SIGKILL)
        holder.kill()
        holder.communicate(timeout=60)
    assert elapsed < ACQUIRE_TIMEOUT_S / 2, elapsed
    with create_cache(path, "zarr", **LAYOUT) as w:  # the killed run's clip is kept; the rest resumes
        assert w.is_done("a") and not w.is_done("b")
        w.write_clip("b", *arrays("b"))
    assert not lock.exists()
    assert open_cache(path).clip_ids("val") == ["b"]


def test_release_keeps_a_lock_file_that_replaced_ours(tmp_path):
    """Someone deletes the held lock file and a second writer takes a new one: the first writer's release
    must not delete the second's file, or a third writer would get in beside the second."""
    cache = tmp_path / "c.zarr"
    first = WriterLock(cache)
    first.acquire()
    first.path.unlink()
    second = WriterLock(cache)
    second.acquire()
    first.release()
    assert second.path.read_text().split()[0] == str(os.getpid()) and second.held
    with pytest.raises(CacheError, match="is being written by"):
        WriterLock(cache).acquire()
    second.release()
    assert not second.path.exists()


def test_lock_released_from_another_thread(tmp_path):
    """The extraction may close its writer from a worker thread; the lock must not be bound to a thread."""
    lock = WriterLock(tmp_path / "c.zarr")
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert not lock.held and not lock.path.exists()
    again = WriterLock(tmp_path / "c.zarr")
    again.acquire()
    again.release()


def test_join_checks_the_job_named_in_the_lock(tmp_path):
    cache = tmp_path / "c.zarr"
    with pytest.raises(CacheError, match=r"not held by this torchrun job \(it holds nothing\)"):
        WriterLock(cache, job="j1").join()
    owner = WriterLock(cache, job="j1")
    owner.acquire()
    WriterLock(cache, job="j1").join()
    with pytest.raises(CacheError, match=rf"not held by this torchrun job \(it holds {os.getpid()} \S+ j1\)"):
        WriterLock(cache, job="j2").join()
    owner.release()


def test_unusable_lock_folder_is_a_clear_cache_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cache = Path(tmp_path / "file" / "c.zarr")
    with pytest.raises(CacheError, match=rf"cannot take the writer lock {cache}\.lock .*choose another --cache path"):
        WriterLock(cache).acquire()
