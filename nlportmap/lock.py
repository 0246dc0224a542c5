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
import time

import _thread
import fcntl
import posix

from .errors import IOFailure, TryAgainLater

TYPE_CHECKING = False  # annotations only: 'typing' costs ~2 ms of a cold start
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

__all__ = [
    "DEFAULT_DIR",
    "LockDirError",
    "LockUnavailable",
    "lock_path",
    "netns_lock",
    "require_lock",
    "set_guard",
]

DEFAULT_DIR = "/run/nlportmap"
#: cannot create the lock file: nobody can hold it, so writes are refused (see module doc)
_CANNOT_CREATE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
_S_IFMT, _S_IFREG = 0o170000, 0o100000

# per thread: why the current netns_lock body runs unlocked (None: it holds the lock)
_tls = _thread._local()
#: called (with no arguments) right after the lock is taken; may raise to abandon the
#: body.  The daemon sets it (set_guard) to drop requests whose shim hung up.
_guard: Callable[[], None] | None = None


def set_guard(fn: Callable[[], None] | None) -> None:
    """Install ``fn`` to run each time a :class:`netns_lock` is acquired (None removes it)."""
    global _guard
    _guard = fn


class LockDirError(IOFailure):
    """The lock directory or file is unusable or untrusted (code 5)."""


class LockUnavailable(IOFailure):
    """The lock file cannot be created, and this call would change kernel state (code 5)."""


def lock_path() -> str:
    """``<NLPORTMAP_LOCK_DIR or /run/nlportmap>/netns-<inode of this thread's netns>.lock``."""
    from . import settings
    d = settings.get("NLPORTMAP_LOCK_DIR", DEFAULT_DIR)
    # thread-self: a thread that setns()ed (tests, daemon workers) locks its own netns
    try:
        ino = posix.stat("/proc/thread-self/ns/net").st_ino
    except FileNotFoundError:  # kernels < 3.17
        ino = posix.stat("/proc/self/ns/net").st_ino
    return f"{d.rstrip('/')}/netns-{ino}.lock"


def _makedirs(d: str) -> None:
    try:
        posix.mkdir(d, 0o700)
    except FileNotFoundError:  # parents missing (a custom NLPORTMAP_LOCK_DIR)
        import os
        os.makedirs(d, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass


def _open_dir(d: str) -> int:
    """A descriptor of the trusted lock directory ``d`` (created 0700 when missing).

    Raises :class:`LockDirError`; OSError with an errno of :data:`_CANNOT_CREATE`
    when it is missing and cannot be created."""
    flags = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        fd = posix.open(d, flags)
    except FileNotFoundError:
        try:
            _makedirs(d)
        except OSError as e:
            if e.errno in _CANNOT_CREATE:
                raise
            raise LockDirError(f"cannot create the lock directory {d}: {e.strerror}") from None
        fd = _open_dir_again(d, flags)
    except OSError as e:
        raise _dir_error(d, e) from None
    try:
        st = posix.fstat(fd)
        if st.st_uid != posix.geteuid():
            raise LockDirError(f"lock directory {d} is owned by uid {st.st_uid}, not {posix.geteuid()}: "
                               "refusing to use it")
        if st.st_mode & 0o022:
            raise LockDirError(f"lock directory {d} is writable by group or others "
                               f"(mode {st.st_mode & 0o7777:04o}): refusing to use it")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def _open_dir_again(d: str, flags: int) -> int:
    try:
        return posix.open(d, flags)
    except OSError as e:
        raise _dir_error(d, e) from None


def _dir_error(d: str, e: OSError) -> LockDirError:
    if e.errno in (errno.ENOTDIR, errno.ELOOP):
        return LockDirError(f"lock directory {d} is a symlink or not a directory: refusing to use it")
    return LockDirError(f"cannot open the lock directory {d}: {e.strerror}")


def _open_file(dfd: int, d: str, name: str) -> int | None:
    """Descriptor of ``d/name`` (read-only, created 0600 when missing); None when it is
    missing and cannot be created (:data:`_CANNOT_CREATE`)."""
    flags = posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NONBLOCK
    where = f"{d.rstrip('/')}/{name}"
    try:
        try:
            fd = posix.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            fd = posix.open(name, flags | posix.O_CREAT, 0o600, dir_fd=dfd)
    except OSError as e:
        if e.errno in _CANNOT_CREATE:
            return None
        if e.errno == errno.ELOOP:
            raise LockDirError(f"lock file {where} is a symlink: refusing to use it") from None
        raise LockDirError(f"cannot open the lock file {where}: {e.strerror}") from None
    if posix.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
        posix.close(fd)
        raise LockDirError(f"lock file {where} is not a regular file: refusing to use it")
    return fd


def require_lock(what: str = "this change") -> None:
    """Raise :class:`LockUnavailable` if this thread is inside a :func:`netns_lock` that
    could not take the lock.  Called right before every kernel write."""
    why = getattr(_tls, "unlocked", None)
    if why:
        raise LockUnavailable(f"{why}; not making {what} without it")


class netns_lock:
    """``with netns_lock() as path:`` hold the lock of the current network namespace.

    TryAgainLater (code 11) after ``timeout`` seconds.  Raises :class:`LockDirError` for
    an untrusted or unusable lock directory.  When the lock file cannot be created
    (read-only or full file system), the body runs unlocked and every write inside it
    raises :class:`LockUnavailable` (see the module doc).  A guard installed with
    :func:`set_guard` runs once the lock is held.  Re-entrant per thread: entering it
    again for the same namespace (e.g. a transaction inside an ADD that already holds
    it around its record, :mod:`nlportmap.records`) is a no-op.  (A class, not ``contextlib``: ~2 ms
    of a cold start.)
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._fd: int | None = None
        self._prev: str | None = None
        self._nested = False
        self._prev_held: str | None = None

    def __enter__(self) -> str:
        path = lock_path()
        if getattr(_tls, "held", None) == path:  # this thread holds it already: re-entered
            self._nested = True
            return path
        d, _, name = path.rpartition("/")
        d = d or "/"
        fd = None
        try:
            dfd = _open_dir(d)
        except OSError as e:  # missing and cannot be created
            why: str | None = f"cannot create the lock directory {d}: {e.strerror}"
        else:
            try:
                fd = _open_file(dfd, d, name)
            finally:
                posix.close(dfd)
            why = None if fd is not None else f"cannot create a lock file in {d} (read-only or full file system)"
        if fd is not None:
            try:
                self._take(fd, path)
            except BaseException:
                posix.close(fd)
                raise
        self._fd = fd
        self._prev = getattr(_tls, "unlocked", None)
        _tls.unlocked = why
        self._prev_held, _tls.held = getattr(_tls, "held", None), path
        if _guard is not None:
            try:
                _guard()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return path

    def _take(self, fd: int, path: str) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TryAgainLater(f"timed out after {self.timeout:g}s waiting for {path}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def __exit__(self, *exc: object) -> None:
        if self._nested:
            self._nested = False
            return
        _tls.unlocked = self._prev
        _tls.held = self._prev_held
        if self._fd is not None:
            posix.close(self._fd)  # closing releases the flock
            self._fd = None
