"""A host-wide lock per network namespace, so our own ADD/DEL/GC never race.

``fcntl.flock`` on ``<dir>/netns-<inode>.lock`` (dir: ``$NLPORTMAP_LOCK_DIR``,
default ``/run/nlportmap``).  The kernel drops the lock when the holder dies
(even by SIGKILL), so a stale lock file can never block later calls; the file
itself is left in place on purpose (deleting it would race with waiters).
The netns inode keys the lock so that plugins working in different network
namespaces (tests, several pods' namespaces) do not serialise each other.
Other nftables users never touch our tables; if one does, our batch aborts on
the stale key (ENOENT/EEXIST) and is retried (nlportmap.nft.backend).
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager

from .errors import TryAgainLater

DEFAULT_DIR = "/run/nlportmap"


def lock_path() -> str:
    d = os.environ.get("NLPORTMAP_LOCK_DIR") or DEFAULT_DIR
    # thread-self: a thread that setns()ed (tests, daemon workers) locks its own netns
    try:
        ino = os.stat("/proc/thread-self/ns/net").st_ino
    except FileNotFoundError:  # kernels < 3.17
        ino = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(d, f"netns-{ino}.lock")


@contextmanager
def netns_lock(timeout: float = 30.0):
    """Hold the lock of the current network namespace; TryAgainLater (code 11) after ``timeout`` s."""
    path = lock_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TryAgainLater(f"timed out after {timeout:g}s waiting for {path}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        yield path
    finally:
        os.close(fd)  # closing releases the flock
