"""Durable per-attachment records: what must exist, so that it can be restored.

Each ADD keeps one record of its attachment, enough to rebuild its plan without the
runtime; ``nlportmap restore`` (:mod:`nlportmap.restore`, which also reads and GCs
records) and the daemon's healer (:mod:`nlportmap.heal`) re-program the recorded
attachments whose kernel objects are missing (a flushed or reloaded firewall).

``$NLPORTMAP_STATE_DIR`` (default ``/run/nlportmap/state``) / ``netns-<inode>-<cookie>``
(:func:`netns_dir`) / :func:`file_name` (network, container ID, ifname, percent-encoded:
no raw name is ever part of a path).  Directories are trusted only when real
(``O_NOFOLLOW``), ours and 0700-like; files are opened relative to them, ``O_NOFOLLOW``.

Ordering, all under the netns lock: ADD writes the record (``<name>.tmp<pid>``, then
``rename``) before its commit and puts the previous one back if the commit fails
(:class:`Recorded`); DEL removes it after its transaction in the same hold
(:class:`Unrecorded`); restore re-reads records under the lock, so it never sees
half of a DEL.  A crash leaves no record and no rules, or a record a restore finishes.
Cold path: built-in modules only (``posix``; JSON through :mod:`nlportmap.jsonio`).
Format (:data:`VERSION`): see docs/performance.md, "Self-healing".
"""
from __future__ import annotations

import errno
import posix

from . import jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any

    from .netconf import ConfMixin as Conf
    from .plan import Owner, Plan

__all__ = [
    "DEFAULT_DIR",
    "VERSION",
    "Recorded",
    "StateDirError",
    "Unrecorded",
    "exists",
    "file_name",
    "netns_dir",
    "remove",
    "save",
]

DEFAULT_DIR = "/run/nlportmap/state"
VERSION = 1
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HEX = "0123456789ABCDEF"
#: file names longer than this (long network names) are replaced by a hash: NAME_MAX is 255
_NAME_MAX = 200
_DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC


class StateDirError(OSError):
    """The state directory is missing, untrusted or unusable."""


# ------------------------------------------------------------------ names
def _enc(text: str) -> str:
    """Percent-encoding of every byte outside ``[A-Za-z0-9_-]`` (of the surrogateescape'd
    UTF-8 bytes: an interface name may hold almost any byte)."""
    out = []
    for b in text.encode("utf-8", "surrogateescape"):
        if b in _SAFE:
            out.append(chr(b))
        else:
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
    return "".join(out)


def file_name(network: str, container_id: str, ifname: str) -> str:
    """``<network>.<containerID>.<ifname>``, each percent-encoded (so no ``.``, ``/`` or
    other unsafe byte survives inside a part); over :data:`_NAME_MAX` bytes, ``h.<sha256>``."""
    name = f"{_enc(network)}.{_enc(container_id)}.{_enc(ifname)}"
    if len(name) > _NAME_MAX:
        if TYPE_CHECKING:  # pragma: no cover - typeshed knows hashlib, not the C module behind it
            from hashlib import sha256
        else:
            try:  # the C module directly: 'hashlib' costs ~1.7 ms of a cold start
                from _sha256 import sha256
            except ImportError:  # pragma: no cover
                from hashlib import sha256
        name = "h." + sha256(name.encode()).hexdigest()
    return name


# ------------------------------------------------------------------ directories
def base_dir() -> str:
    """``NLPORTMAP_STATE_DIR`` of the current request (:mod:`nlportmap.settings`), default
    :data:`DEFAULT_DIR`."""
    from . import settings
    return settings.get("NLPORTMAP_STATE_DIR", DEFAULT_DIR).rstrip("/") or "/"


def netns_dir() -> str:
    """``netns-<inode>-<cookie>`` of this thread's network namespace.  The inode alone (the
    lock's key) is reused once a namespace is gone, and a new namespace must never inherit
    a dead one's records; the cookie (``SO_NETNS_COOKIE``, Linux 5.14) never is.  Older
    kernels: ``netns-<inode>``."""
    try:
        ino = posix.stat("/proc/thread-self/ns/net").st_ino
    except FileNotFoundError:  # kernels < 3.17
        ino = posix.stat("/proc/self/ns/net").st_ino
    import _socket
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            return f"netns-{ino}-{int.from_bytes(s.getsockopt(_socket.SOL_SOCKET, 71, 8), 'little')}"
        finally:
            s.close()
    except OSError:  # no SO_NETNS_COOKIE
        return f"netns-{ino}"


def _trusted(fd: int, where: str) -> int:
    try:
        st = posix.fstat(fd)
        if st.st_uid != posix.geteuid():
            raise StateDirError(errno.EPERM, f"state directory {where} is owned by uid {st.st_uid}, "
                                f"not {posix.geteuid()}: refusing to use it")
        if st.st_mode & 0o022:
            raise StateDirError(errno.EPERM, f"state directory {where} is writable by group or others "
                                f"(mode {st.st_mode & 0o7777:04o}): refusing to use it")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def _open_dir(path: str, create: bool, dir_fd: int | None = None) -> int | None:
    """A trusted descriptor of ``path`` (relative to ``dir_fd``); None if missing and not ``create``."""
    try:
        fd = posix.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            return None
        try:
            if dir_fd is None:
                _makedirs(path)
            else:
                posix.mkdir(path, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        fd = posix.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise StateDirError(e.errno, f"state directory {path} is a symlink or not a directory: "
                                "refusing to use it") from None
        raise
    return _trusted(fd, path)


def _makedirs(path: str) -> None:
    parent = path.rpartition("/")[0]
    if parent and parent != path:
        try:
            posix.stat(parent)
        except FileNotFoundError:
            _makedirs(parent)
    try:
        posix.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _ns_dir(create: bool) -> int | None:
    """Descriptor of this netns's record directory (None: none exists and not ``create``)."""
    base = _open_dir(base_dir(), create)
    if base is None:
        return None
    try:
        return _open_dir(netns_dir(), create, dir_fd=base)
    finally:
        posix.close(base)


# ------------------------------------------------------------------ records
def _plain_conf(conf: Conf, plan: Plan) -> dict[str, Any]:
    """The decoded configuration fields make_plan needs, as plain JSON values."""
    c: dict[str, Any] = {"cniVersion": conf.cniVersion, "name": conf.name, "type": "portmap",
               "snat": bool(conf.snat), "masqAll": bool(conf.masqAll)}
    for k in ("markMasqBit", "externalSetMarkChain", "conditionsV4", "conditionsV6", "backend",
              "conflictPolicy", "serviceProxyInterfaces"):
        v = getattr(conf, k, None)
        if v is not None:
            c[k] = list(v) if isinstance(v, (list, tuple)) else v
    c["runtimeConfig"] = {"portMappings": [
        {"hostPort": m.hostPort, "containerPort": m.containerPort, "protocol": m.protocol,
         **({"hostIP": m.hostIP} if m.hostIP else {})} for m in plan.all_mappings]}
    return c


def encode(plan: Plan, conf: Conf, backend: str, created_ms: int) -> bytes:
    o = plan.owner
    try:
        comment = o.comment
        comment.encode()
    except UnicodeError:  # an ifname of raw bytes: not representable in JSON text
        comment = None
    ips = plan.container_cidrs
    rec = {"v": VERSION, "network": o.network, "containerID": o.container_id, "ifname": _enc(o.ifname),
           "owner": comment, "backend": backend, "createdMs": created_ms,
           "containerIPs": {"4": ips.get(4), "6": ips.get(6)}, "conf": _plain_conf(conf, plan)}
    return jsonio.dumps(rec).encode()


def _read(dfd: int, name: str) -> bytes | None:
    try:
        fd = posix.open(name, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    try:
        chunks: list[bytes] = []
        while True:
            b = posix.read(fd, 65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        posix.close(fd)


def _write(dfd: int, name: str, data: bytes) -> None:
    tmp = f"{name}.tmp{posix.getpid()}"
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        fd = posix.open(tmp, flags, 0o600, dir_fd=dfd)
    except FileExistsError:  # left by a dead process with our pid
        posix.unlink(tmp, dir_fd=dfd)
        fd = posix.open(tmp, flags, 0o600, dir_fd=dfd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[posix.write(fd, view):]
        finally:
            posix.close(fd)
        posix.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            posix.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise


def _unlink(dfd: int, name: str) -> bool:
    try:
        posix.unlink(name, dir_fd=dfd)
        return True
    except FileNotFoundError:
        return False


def save(plan: Plan, conf: Conf, backend: str, created_ms: int) -> Callable[[], None]:
    """Write ``plan``'s record; returns a callable that undoes it (puts back the previous
    record, or removes the new one).  Raises OSError (:class:`StateDirError`)."""
    o = plan.owner
    name = file_name(o.network, o.container_id, o.ifname)
    data = encode(plan, conf, backend, created_ms)
    dfd = _ns_dir(True)
    if dfd is None:  # pragma: no cover - create=True makes the directory or raises
        raise StateDirError(errno.ENOENT, "no record directory")
    try:
        before = _read(dfd, name)
        _write(dfd, name, data)
    finally:
        posix.close(dfd)

    def undo() -> None:
        d = _ns_dir(False)
        if d is None:
            return
        try:
            if before is None:
                _unlink(d, name)
            else:
                _write(d, name, before)
        finally:
            posix.close(d)
    return undo


def _path_of(owner: Owner) -> str:
    return f"{base_dir()}/{netns_dir()}/{file_name(owner.network, owner.container_id, owner.ifname)}"


def exists(owner: Owner) -> bool:
    """Is there a record of ``owner`` in this netns?  (One ``stat``; False when unsure
    means only that the caller's cheap path is taken: the path is built from encoded
    names, and a symlink is not followed.)"""
    try:
        posix.lstat(_path_of(owner))
        return True
    except OSError:
        return False


def remove(owner: Owner) -> bool:
    """Remove ``owner``'s record (True if there was one).  Never raises for a missing one."""
    try:
        dfd = _ns_dir(False)
    except OSError:
        return False
    if dfd is None:
        return False
    try:
        return _unlink(dfd, file_name(owner.network, owner.container_id, owner.ifname))
    finally:
        posix.close(dfd)


# ------------------------------------------------------------------ the plugin's seams
class Recorded:
    """``with Recorded(plan, conf, backend_name):`` hold the netns lock, write ``plan``'s
    record, run the body (the ADD's transaction); if the body raises, the previous record
    is put back.  A record that cannot be written is a warning, not a failed ADD (the
    mapping works; only its self-healing is lost)."""

    def __init__(self, plan: Plan, conf: Conf, backend: str) -> None:
        from .lock import netns_lock
        self._lock = netns_lock()
        self._args = (plan, conf, backend)
        self._undo: Callable[[], None] | None = None

    def __enter__(self) -> Recorded:
        self._lock.__enter__()
        try:
            import time
            self._undo = save(*self._args, int(time.time() * 1000))
        except OSError as e:
            import sys
            sys.stderr.write(f"nlportmap: warning: no record of this attachment (it will not be "
                             f"restored after a firewall reload): {e.strerror or e}\n")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None and self._undo is not None:
                try:
                    self._undo()
                except OSError:
                    pass
        finally:
            self._lock.__exit__(exc_type, exc, tb)


class Unrecorded:
    """``with Unrecorded(owner):`` hold the netns lock around the body (DEL's transaction)
    and remove ``owner``'s record after it succeeded."""

    def __init__(self, owner: Owner) -> None:
        from .lock import netns_lock
        self._lock = netns_lock()
        self._owner = owner

    def __enter__(self) -> Unrecorded:
        self._lock.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                remove(self._owner)
        finally:
            self._lock.__exit__(exc_type, exc, tb)
