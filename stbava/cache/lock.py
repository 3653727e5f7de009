"""One writer (or one torchrun job) per cache: an OS file lock on ``<cache>.lock``.

The lock is ``flock`` on that file, taken through :class:`filelock.UnixFileLock`. The kernel drops a flock
when the holder's process ends, however it ends (exit, exception, SIGKILL, OOM kill), so a killed writer
never leaves a lock that has to be detected as stale and broken: the next writer simply takes it. The file
may stay behind after a kill; it is reused as it is.

The file's text names the holder, ``pid host [job]``, written right after the lock is taken. It is only
read for messages and for :meth:`WriterLock.join`: under torchrun rank 0 takes the lock with a random job
token and tells the other ranks that token; they check that the file names their job and then write their
own disjoint clips without taking the lock. A process outside the job cannot know the token, so it is
still refused.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from filelock import Timeout, UnixFileLock

from stbava.cache.manifest import CacheError

__all__ = ["ACQUIRE_TIMEOUT_S", "WriterLock", "lock_path"]

# A second writer is refused after this long, not made to wait for the first one (which may run for hours).
# It is not 0 so that a writer starting just as another one finishes gets the lock: for that instant a
# contender can hold the finished writer's unlinked file, which filelock rejects, and then needs one retry.
ACQUIRE_TIMEOUT_S = 1.0


def lock_path(cache_path: Path) -> Path:
    """The lock file of the store at ``cache_path`` (beside it, so it is on the same filesystem)."""
    return cache_path.with_name(cache_path.name + ".lock")


class WriterLock:
    """The writer lock of one cache; ``acquire`` (one writer, rank 0) or ``join`` (the job's other ranks).

    Only the holder deletes the lock file, on ``release``, and only while it still holds it; a joined rank
    never releases anything.
    """

    def __init__(self, cache_path: Path, job: str | None = None) -> None:
        self.cache = cache_path
        self.path = lock_path(cache_path)
        self.job = job
        self.token = f"{os.getpid()} {socket.gethostname()}" + (f" {job}" if job else "")
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we hold
        # thread_local=False: the writer may be closed from another thread than the one that opened it.
        # fallback_to_soft=False: never degrade to an existence lock, which a killed process would leave held.
        self._lock = UnixFileLock(self.path, timeout=ACQUIRE_TIMEOUT_S, thread_local=False,
                                  fallback_to_soft=False, on_acquired=self._write_owner)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> None:
        """Take the lock, or raise a CacheError naming the holder at once (after ``ACQUIRE_TIMEOUT_S``)."""
        try:
            self._lock.acquire()
        except Timeout:
            owner = self._owner() or "another process"
            raise CacheError(f"cache {self.cache} is being written by {owner} (lock file {self.path}); wait for "
                             "it to finish or stop it, then rerun (it resumes). The lock ends with that process, "
                             "even if it is killed, so there is no lock file to delete") from None
        except OSError as e:  # no write permission, or a filesystem without flock (ENOSYS)
            raise CacheError(f"cannot take the writer lock {self.path} of cache {self.cache} ({e}); the cache "
                             "folder must be writable and on a filesystem with flock support (a local disk, or "
                             "NFS with locking on); choose another --cache path") from None

    def _write_owner(self, fd: int) -> None:
        """Called by filelock with the locked descriptor: record who holds it (for messages and ``join``)."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, (self.token + "\n").encode(), 0)
        os.fsync(fd)  # the job's ranks on other nodes read it next
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)

    def join(self) -> None:
        """Another rank of the owner's torchrun job: check the lock names our job; never take or delete it."""
        parts = self._read()
        if self.job is None or len(parts) < 3 or parts[2] != self.job:
            raise CacheError(f"cache {self.cache}: the lock {self.path} is not held by this torchrun job "
                             f"(it holds {' '.join(parts) or 'nothing'}); was it deleted or taken over while the "
                             "job ran? Rerun the extraction (it resumes)")

    def _read(self) -> list[str]:
        try:
            return self.path.read_text().split()
        except OSError:
            return []

    def _owner(self) -> str | None:
        parts = self._read()
        if len(parts) not in (2, 3):
            return None  # empty: the holder took the lock an instant ago and has not written its name yet
        return f"pid {parts[0]} on {parts[1]}" + (f" (torchrun job {parts[2]})" if len(parts) == 3 else "")

    def release(self) -> None:
        """Delete the lock file, then unlock. Unlinking while still locked is what makes this safe: a writer
        that opened the old file meanwhile finds it unlinked once it gets the flock, and filelock makes it
        retry on the path (a new file) instead of counting the old one as the lock."""
        if not self.held:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:  # never delete a file someone put there in its place
                self.path.unlink()
        except OSError:
            pass  # a lock file left in place is harmless: the next writer reuses it
        finally:
            self._inode = None
            self._lock.release()
