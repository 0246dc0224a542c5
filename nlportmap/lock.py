"""A host-wide lock per network namespace, so our own ADD/DEL/GC never race.

``fcntl.flock`` on ``<dir>/netns-<inode>.lock`` (dir: ``$NLPORTMAP_LOCK_DIR``,
default ``/run/nlportmap``).  The kernel drops the lock when the holder dies
(even by SIGKILL), so a stale lock file can never block later calls; the file
itself is left in place on purpose (deleting it would race with waiters).
The netns inode keys the lock so that plugins working in different network
namespaces (tests, several pods' namespaces) do not serialise each other.
Other nftables users never touch our tables; if one does, our batch aborts on
the stale key (ENOENT/EEXIST) and is retried (nlportmap.nft.backend).

Whoever can hold the flock can stall every ADD, and whoever can plant a symlink
can make root create files elsewhere, so the directory is trusted only when it
is a real directory (opened ``O_DIRECTORY|O_NOFOLLOW``), owned by our euid and
not writable by group or others (created 0700); the lock file is opened
relative to it with ``O_NOFOLLOW``.  Anything else fails closed
(:class:`LockDirError`, code 5, naming the directory).

The lock file is opened read-only (``flock`` needs only a descriptor), so an
existing one keeps working on a read-only or full file system.  When it does not
exist and cannot be created there (``EROFS``, ``ENOSPC``, ``EDQUOT``), nobody can
hold it; the context is then entered *without* the lock, but every kernel write
made inside it (:func:`require_lock`, called by the nftables commit and the
iptables restore) raises :class:`LockUnavailable`.  So a call that changes
nothing -- typically the DEL of a container that owns nothing -- still succeeds,
and one that would change something fails with a clear error instead of
writing unserialised.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from contextlib import contextmanager

from .errors import IOFailure, TryAgainLater

__all__ = ["DEFAULT_DIR", "lock_path", "netns_lock", "require_lock", "LockDirError", "LockUnavailable"]

DEFAULT_DIR = "/run/nlportmap"
#: cannot create the lock file: nobody can hold it, so writes are refused (see module doc)
_CANNOT_CREATE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)

_tls = threading.local()


class LockDirError(IOFailure):
    """The lock directory or file is unusable or untrusted (code 5)."""


class LockUnavailable(IOFailure):
    """The lock file cannot be created, and this call would change kernel state (code 5)."""


def lock_path() -> str:
    d = os.environ.get("NLPORTMAP_LOCK_DIR") or DEFAULT_DIR
    # thread-self: a thread that setns()ed (tests, daemon workers) locks its own netns
    try:
        ino = os.stat("/proc/thread-self/ns/net").st_ino
    except FileNotFoundError:  # kernels < 3.17
        ino = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(d, f"netns-{ino}.lock")


def _open_dir(d: str) -> int:
    """A descriptor of the trusted lock directory ``d`` (created 0700 when missing).

    Raises :class:`LockDirError`; OSError with an errno of :data:`_CANNOT_CREATE`
    when it is missing and cannot be created."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(d, flags)
    except FileNotFoundError:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            if e.errno in _CANNOT_CREATE:
                raise
            raise LockDirError(f"cannot create the lock directory {d}: {e.strerror}") from None
        fd = _open_dir_again(d, flags)
    except OSError as e:
        raise _dir_error(d, e) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise LockDirError(f"lock directory {d} is owned by uid {st.st_uid}, not {os.geteuid()}: "
                               "refusing to use it")
        if st.st_mode & 0o022:
            raise LockDirError(f"lock directory {d} is writable by group or others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}): refusing to use it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir_again(d: str, flags: int) -> int:
    try:
        return os.open(d, flags)
    except OSError as e:
        raise _dir_error(d, e) from None


def _dir_error(d: str, e: OSError) -> LockDirError:
    if e.errno in (errno.ENOTDIR, errno.ELOOP):
        return LockDirError(f"lock directory {d} is a symlink or not a directory: refusing to use it")
    return LockDirError(f"cannot open the lock directory {d}: {e.strerror}")


def _open_file(dfd: int, d: str, name: str) -> int | None:
    """Descriptor of ``d/name`` (read-only, created 0600 when missing); None when it is
    missing and cannot be created (:data:`_CANNOT_CREATE`)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            fd = os.open(name, flags | os.O_CREAT, 0o600, dir_fd=dfd)
    except OSError as e:
        if e.errno in _CANNOT_CREATE:
            return None
        if e.errno == errno.ELOOP:
            raise LockDirError(f"lock file {os.path.join(d, name)} is a symlink: refusing to use it") from None
        raise LockDirError(f"cannot open the lock file {os.path.join(d, name)}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockDirError(f"lock file {os.path.join(d, name)} is not a regular file: refusing to use it")
    return fd


def require_lock(what: str = "this change") -> None:
    """Raise :class:`LockUnavailable` if this thread is inside a :func:`netns_lock` that
    could not take the lock.  Called right before every kernel write."""
    why = getattr(_tls, "unlocked", None)
    if why:
        raise LockUnavailable(f"{why}; not making {what} without it")


@contextmanager
def netns_lock(timeout: float = 30.0):
    """Hold the lock of the current network namespace; TryAgainLater (code 11) after ``timeout`` s.

    Raises :class:`LockDirError` for an untrusted or unusable lock directory.  When the
    lock file cannot be created (read-only or full file system), the body runs unlocked
    and every write inside it raises :class:`LockUnavailable` (see the module doc)."""
    path = lock_path()
    d, name = os.path.split(path)
    fd = None
    try:
        dfd = _open_dir(d)
    except OSError as e:  # missing and cannot be created
        why = f"cannot create the lock directory {d}: {e.strerror}"
    else:
        try:
            fd = _open_file(dfd, d, name)
        finally:
            os.close(dfd)
        why = None if fd is not None else f"cannot create a lock file in {d} (read-only or full file system)"
    if fd is None:
        prev = getattr(_tls, "unlocked", None)
        _tls.unlocked = why
        try:
            yield path
        finally:
            _tls.unlocked = prev
        return
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
        prev = getattr(_tls, "unlocked", None)
        _tls.unlocked = None
        try:
            yield path
        finally:
            _tls.unlocked = prev
    finally:
        os.close(fd)  # closing releases the flock
