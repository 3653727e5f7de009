"""Two extractions on one cache: exactly one writes at a time, the other stops with a clear lock error.

Readers may open the cache while it is written: they only ever see whole clips. After the writer is done,
a second run on the same cache cooperates (it adds its clips and skips the done ones).
"""

from __future__ import annotations

import time

from relhelpers import assert_done_clips_equal, cli, done_count, extract_args, leftovers, start

from stbava.cache import open_cache


def test_simultaneous_extractions_one_wins_the_other_gets_a_lock_error(dataset, ref_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    procs = [start(*extract_args(dataset.root, cache)) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 1], [0, 0]), results  # [0, 0] only if one finished before the other started
    for rc, out, err in results:
        assert "Traceback" not in out + err
        if rc == 1:
            assert "is being written by" in err and f"{cache}.lock" in err and "wait for it" in err
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert not cache.with_name("c.zarr.lock").exists() and not leftovers(tmp_path)


def test_second_writer_is_refused_while_readers_see_only_whole_clips(dataset, ref_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    lock = cache.with_name("c.zarr.lock")
    writer = start(*extract_args(dataset.root, cache, "--split", "train", "--split", "val"))
    deadline = time.monotonic() + 120
    while not (cache.exists() and lock.exists()) and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.poll() is None, "the first extraction ended too early"

    # a second writer (other, disjoint clips: the test split) is refused; nothing changes
    r = cli(*extract_args(dataset.root, cache, "--split", "test"))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert f"pid {writer.pid}" in r.output and str(lock) in r.output

    seen = 0
    while writer.poll() is None:  # readers meanwhile: every clip flagged done is complete
        seen = max(seen, assert_done_clips_equal(cache, ref_cache))
        time.sleep(0.05)
    _, err = writer.communicate()
    assert writer.returncode == 0, err
    assert done_count(cache) == 5 and "test" not in open_cache(cache).manifest.splits

    # once the first writer is gone, the same command cooperates: it adds the test clip and skips the rest
    again = cli(*extract_args(dataset.root, cache))
    assert again.exit_code == 0, again.output
    assert "wrote 1, 5 already done" in again.output
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert not lock.exists()
