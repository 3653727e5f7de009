"""Two extractions on one cache: exactly one writes at a time, the other stops with a clear lock error.

The first extraction is paused between encoder batches (:func:`relhelpers.gated_extraction`) while the
second one runs, so the second always meets a held lock: the outcome is forced, not left to timing.
Readers may open the cache while it is written: they only ever see whole clips. After the writer is done,
or killed, a second run on the same cache cooperates (it adds its clips and skips the done ones).
"""

from __future__ import annotations

import os
import signal

from relhelpers import (
    assert_done_clips_equal,
    cli,
    done_count,
    extract_args,
    gated_extraction,
    leftovers,
    start,
    wait_for,
)

from stbava.cache import open_cache


def test_second_extraction_meets_the_held_lock_and_gets_a_lock_error(dataset, ref_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    lock = cache.with_name("c.zarr.lock")
    with gated_extraction(tmp_path / "gate", *extract_args(dataset.root, cache)) as first:
        first.wait_at(1)  # lock taken, store created, nothing encoded yet
        assert lock.read_text().split()[0] == str(first.pid)
        second = start(*extract_args(dataset.root, cache))  # the real second process, same command
        out, err = second.communicate(timeout=300)
        assert second.returncode == 1, out + err
        assert "Traceback" not in out + err
        assert f"cache {cache} is being written by pid {first.pid} on " in err, err
        assert f"(lock file {cache}.lock)" in err and "wait for it" in err, err
        assert first.proc.poll() is None  # the refusal did not disturb the holder
        first.release()
        out, err = first.proc.communicate(timeout=300)
        assert first.proc.returncode == 0, err
        assert "Traceback" not in out + err
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert not lock.exists() and not leftovers(tmp_path)


def test_second_writer_is_refused_while_readers_see_only_whole_clips(dataset, ref_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    lock = cache.with_name("c.zarr.lock")
    read_while_writing: list[int] = []

    def read() -> None:  # a reader meanwhile: every clip flagged done is complete
        if cache.exists():
            read_while_writing.append(assert_done_clips_equal(cache, ref_cache))

    with gated_extraction(tmp_path / "gate", *extract_args(dataset.root, cache, "--split", "train",
                                                           "--split", "val")) as writer:
        writer.wait_at(1)
        # a second writer (other, disjoint clips: the test split) is refused; nothing changes
        r = cli(*extract_args(dataset.root, cache, "--split", "test"))
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
        assert f"pid {writer.pid}" in r.output and str(lock) in r.output

        seen = []  # whole clips a reader sees at each pause: 5 clips go in batches of 2, 2, 1
        for batch in (1, 2, 3):
            writer.wait_at(batch, during=read)
            # the previous batch is written by a background thread: wait until it landed, reading meanwhile
            wait_for(lambda b=batch: done_count(cache) == 2 * (b - 1), during=read, what="previous batch written")
            seen.append(assert_done_clips_equal(cache, ref_cache))
            writer.release(batch)
        while writer.proc.poll() is None:
            read()
        _, err = writer.proc.communicate()
        assert writer.proc.returncode == 0, err
    assert seen == [0, 2, 4]
    assert read_while_writing and all(0 <= n <= 5 for n in read_while_writing)
    assert read_while_writing == sorted(read_while_writing)  # a clip once seen done never disappears
    assert done_count(cache) == 5 and "test" not in open_cache(cache).manifest.splits

    # once the first writer is gone, the same command cooperates: it adds the test clip and skips the rest
    again = cli(*extract_args(dataset.root, cache))
    assert again.exit_code == 0, again.output
    assert "wrote 1, 5 already done" in again.output
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert not lock.exists()


def test_sigkilled_writer_frees_the_lock_for_the_next_run_at_once(dataset, ref_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    lock = cache.with_name("c.zarr.lock")
    with gated_extraction(tmp_path / "gate", *extract_args(dataset.root, cache)) as first:
        first.wait_at(1)
        first.release(1)
        first.wait_at(2)
        wait_for(lambda: done_count(cache) == 2, what="first batch written")
        refused = cli(*extract_args(dataset.root, cache))  # held: refused ...
        assert refused.exit_code == 1 and f"being written by pid {first.pid}" in refused.output, refused.output
        os.kill(first.pid, signal.SIGKILL)
        first.proc.communicate(timeout=60)
        assert first.proc.returncode == -signal.SIGKILL
    assert lock.read_text().split()[0] == str(first.pid)  # nothing cleaned up after the killed writer

    again = cli(*extract_args(dataset.root, cache))  # ... and right after the kill, the same command runs
    assert again.exit_code == 0, again.output
    assert "wrote 4, 2 already done" in again.output
    assert_done_clips_equal(cache, ref_cache, complete=True)
    assert not lock.exists() and not leftovers(tmp_path)
