"""``nlportmap daemon``: serve plugin requests from a resident process.

The exec'd plugin (:mod:`nlportmap.shim`) forwards its environment and stdin
over a Unix socket; this process runs the very same code path as an
in-process plugin -- :func:`nlportmap.skel.run` with a
:class:`~nlportmap.plugin.Plugin` per request -- but with pyroute2, msgspec and
anyio already imported, pyroute2's message classes already compiled and
``NETLINK_NETFILTER`` sockets already open.  The reply is the request's
stdout, stderr and exit status, which the shim prints as its own.

Threads: one per connection (bounded by ``max_clients``; beyond that a request
is refused and the shim works in-process).  Nothing is serialized here beyond
what the per-netns lock (:mod:`nlportmap.lock`) already serializes.  Each request
borrows an :class:`~nlportmap.nft.backend.NftBackend` (one open netlink socket)
from a pool and returns it afterwards (a failed request's socket is closed
instead); iptables requests get a fresh ``IptBackend`` as in-process.

Stateless: the daemon keeps nothing the kernel does not have (no cache of
mappings, no queue that outlives a connection).  Killing it at any moment loses
nothing: a shim whose connection breaks does the work itself.

Who may use it (checked per connection, before reading the request):

* ``SO_PEERCRED`` uid 0 only (the socket file is also 0600 in a 0700 dir);
* the peer's network namespace (``/proc/<peer pid>/ns/net``, st_dev + st_ino),
  and the namespace the shim claims, must both be the daemon's own: a daemon
  never programs a namespace it was not asked to.  A plugin run with
  ``ip netns exec other ...`` reaches the same socket file but is refused;
* ``NLPORTMAP_*`` settings travel with the request (:data:`PER_REQUEST_ENV`:
  among them the lock and record directories and the upstream clean-up switch,
  which requests read through :mod:`nlportmap.settings`); any other one (e.g. the
  test knob ``NLPORTMAP_CT_FALLBACK``) must equal the daemon's own.  The healer
  uses the daemon's own directories.

Every refusal is a distinct ``X`` reply naming the reason; the shim then works
in-process.

Late work never overrides the shim's fallback: every mutation of kernel state
happens under the per-netns lock, and the daemon checks right after taking
that lock that the shim is still connected (a hung-up shim is doing the work
itself); see :mod:`nlportmap.shim`.

Socket activation: started by systemd with ``LISTEN_FDS=1``/``LISTEN_PID`` (the
socket unit ``deploy/nlportmap-daemon.socket``), it serves the inherited listening
socket on fd 3 instead of binding one, and exits after ``--idle-exit`` seconds
without a request (default 60 when activated; systemd starts it again on the
next connection).  A daemon that cannot serve (socket in use, directory not
creatable, any start-up failure) exits 1 with a one-line error.

Warnings: everything a request's handlers write to ``sys.stderr`` -- in the request's
thread or in its tasks on the shared event loop -- goes into that request's reply
(per thread, and per task through a context variable), which the shim prints.

Test hook: ``NLPORTMAP_DAEMON_TEST_DELAY`` (seconds, read from the daemon's own
environment) sleeps after acknowledging each request.
"""
from __future__ import annotations

import errno
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from contextlib import suppress
from contextvars import ContextVar

from .plugin import Plugin
from .proto import DEFAULT_SOCKET, MAGIC, MAX_FRAME, PROTOCOL_VERSION, netns_identity

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import _socket
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager
    from typing import TextIO, TypeVar

    from anyio.from_thread import BlockingPortal

    from .backends import Backend
    from .heal import Healer
    from .netconf import ConfMixin as Conf
    from .nft.backend import NftBackend
    from .nft.wire import NetfilterSocket

    _T = TypeVar("_T")

__all__ = ["PER_REQUEST_ENV", "Abandoned", "Daemon", "main"]

#: NLPORTMAP_* variables the daemon honours per request; NLPORTMAP_DAEMON_* are the daemon's
#: own settings; every other NLPORTMAP_* must be equal in the request and the daemon's env.
PER_REQUEST_ENV = frozenset({
    "NLPORTMAP_SOCKET", "NLPORTMAP_DAEMON_DEADLINE", "NLPORTMAP_DAEMON_TIMEOUT",
    "NLPORTMAP_TIMINGS_FILE", "NLPORTMAP_DEBUG",
    # travel with the request (Request.settings -> nlportmap.settings / Plugin): a caller
    # with other lock or record directories, or without the upstream clean-up, is served
    "NLPORTMAP_LOCK_DIR", "NLPORTMAP_STATE_DIR", "NLPORTMAP_UPSTREAM_CLEANUP",
    "NLPORTMAP_HEAL",  # the daemon's own switch (nlportmap.heal), not a request's
})
#: settings whose absence in a request means "the default", not "the daemon's value"
_CALLER_DIRS = ("NLPORTMAP_LOCK_DIR", "NLPORTMAP_STATE_DIR")
REQUEST_READ_TIMEOUT = 10.0
PROBE_TTL = 10.0

_tls = threading.local()
#: the reply's stderr buffer of the request a task on the daemon's event loop works for
_task_stderr: ContextVar[TextIO | None] = ContextVar("nlportmap_request_stderr", default=None)
LISTEN_FDS_START = 3
DEFAULT_IDLE_EXIT = 60.0


class StartupError(Exception):
    """The daemon cannot serve; ``args[0]`` is the one-line reason."""


class Abandoned(RuntimeError):
    """The shim hung up: it is doing the work in-process, so this request must not commit."""


def _console() -> TextIO:
    """The process's own stderr (``sys.__stderr__``; ``sys.stderr`` if it had none)."""
    return sys.__stderr__ or sys.stderr


def _log(msg: str) -> None:
    err = _console()
    err.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + "nlportmap daemon: " + msg + "\n")
    err.flush()


class _ThreadStderr(io.TextIOBase):
    """``sys.stderr`` for the daemon: a request thread's writes go into its reply."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    @staticmethod
    def _buf() -> TextIO | None:
        buf = getattr(_tls, "stderr", None)
        return buf if buf is not None else _task_stderr.get()

    def write(self, s: str) -> int:
        buf = self._buf()
        return (buf if buf is not None else self._real).write(s)

    def flush(self) -> None:
        buf = self._buf()
        (buf if buf is not None else self._real).flush()


# ----------------------------------------------------------------- the guard
def _hung_up(conn: socket.socket) -> bool:
    """True if the shim closed its end (or sent anything after its request)."""
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(0))


def _install_guard() -> None:
    """Make every :class:`nlportmap.lock.netns_lock` of a request check, once the lock is
    held, that the request's shim is still connected; if it hung up, :class:`Abandoned`
    is raised instead of touching the kernel (the shim works in-process meanwhile)."""
    from . import lock

    def guard() -> None:
        conn = getattr(_tls, "conn", None)
        if conn is not None and _hung_up(conn):
            raise Abandoned("the plugin process hung up (it works in-process); not committing")

    lock.set_guard(guard)


# ----------------------------------------------------------------- closer
def _defer_socket_closes() -> None:
    """Close netlink sockets on a background thread.  Closing a ``NETLINK_NETFILTER``
    socket costs 10-20 ms of kernel time here (measured: netlink release waits for an
    RCU grace period), and DEL opens one of its own (upstream clean-up).  An exec'd
    plugin pays it at exit; the daemon need not make the caller wait for it."""
    import queue
    from .nft import wire
    q: queue.SimpleQueue[_socket.socket] = queue.SimpleQueue()

    def closer() -> None:
        while True:
            q.get().close()

    threading.Thread(target=closer, name="netlink-closer", daemon=True).start()
    wire.set_closer(q.put)


# ----------------------------------------------------------------- plugin
class DaemonPlugin(Plugin):
    """A Plugin whose nftables backend is borrowed from the daemon's warm pool."""

    def __init__(self, daemon: Daemon, t0: float) -> None:
        super().__init__(t0=t0)
        self._daemon = daemon
        self.lease: NftBackend | None = None
        self.reported: str | None = None

    def backend_for(self, conf: Conf) -> Backend:
        if self._backend is None:
            from .backends import make_backend
            name = self._daemon.choose(conf)
            try:
                from .config import check_backend_conflict
            except ImportError:  # pragma: no cover
                pass
            else:
                check_backend_conflict(conf, name)
            if name == "nftables":
                if self.lease is None:
                    self.lease = self._daemon.take_backend()
                self._backend = self.lease
            else:
                self._backend = make_backend(name)
        return self._backend

    def _nft_socket(self) -> NetfilterSocket:
        """The pooled backend's socket (never a new one per request: its release could
        wait for nf_tables' deferred cleanup on a request thread)."""
        if self.lease is None:
            self.lease = self._daemon.take_backend()
        return self.lease.sock

    def run_async(self, fn: Callable[..., Awaitable[_T]], *args: object) -> _T:
        """On the daemon's long-lived event loop, not a new one.  The task's
        stderr writes (e.g. a conntrack warning) go into this request's reply."""
        err = getattr(_tls, "stderr", None)

        async def for_this_request() -> _T:
            _task_stderr.set(err)  # the task's own context (and its child tasks')
            return await fn(*args)

        return self._daemon.portal.call(for_this_request)

    def _report(self, command: str) -> None:  # the daemon reports per request
        self.reported = command


def _plugin_class() -> type[DaemonPlugin]:
    return DaemonPlugin


# ----------------------------------------------------------------- warm pool
class WarmPool:
    """The daemon's open :class:`~nlportmap.nft.backend.NftBackend` s (one netlink socket
    each, opened in the daemon's namespace), lent to requests, and the nf_tables probe."""

    def __init__(self) -> None:
        self._pool: list[NftBackend] = []
        self._lock = threading.Lock()
        self._probe: tuple[float, str | None] | None = None

    def take(self) -> NftBackend:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        from .nft.backend import NftBackend
        b = NftBackend()
        _ = b.sock  # open it now (in the daemon's namespace)
        return b

    def give(self, b: NftBackend) -> None:
        with self._lock:
            if len(self._pool) < 32:
                self._pool.append(b)
                return
        b.close()

    def probe(self) -> tuple[str | None, Backend | None]:
        """The nf_tables probe of :func:`nlportmap.backends.choose` (GETGEN on a pooled
        socket), memoized for :data:`PROBE_TTL` seconds.  Whether nf_tables works is a
        property of the kernel, not of any mapping: nothing about the node's state is cached."""
        now = time.monotonic()
        if self._probe is None or now - self._probe[0] > PROBE_TTL:
            b = self.take()
            try:
                b.sock.genid()
                reason = None
            except OSError as e:
                reason = f"nf_tables not reachable over netlink: {e}"
            self.give(b)
            self._probe = (now, reason)
            if reason is not None:
                _log(f"nftables not usable ({reason}): iptables")
        return self._probe[1], None

    def close(self) -> None:
        with self._lock:
            for b in self._pool:
                b.close()
            self._pool.clear()


# ----------------------------------------------------------------- one connection
def _send(conn: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    conn.sendall(kind + len(payload).to_bytes(4, "big") + payload)


def _peer_check(conn: socket.socket, netns: tuple[int, int]) -> str | None:
    """None if the peer (of our namespace ``netns``) may use us, else the refusal reason."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != 0:
        return f"peer uid {uid} is not root"
    if pid <= 0:
        return "peer process not visible from the daemon (run it with hostPID)"
    try:
        theirs = netns_identity(str(pid))
    except OSError as e:
        return f"cannot read the peer's network namespace: {e.strerror}"
    if theirs != netns:
        return "peer is in another network namespace"
    return None


def _read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, tuple[int, int]]:
    def exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ValueError("short read")
            buf += chunk
        return bytes(buf)

    head = exact(9)
    if head[:4] != MAGIC or head[4] != PROTOCOL_VERSION:
        raise ValueError("unknown protocol")
    n = int.from_bytes(head[5:9], "big")
    if n > MAX_FRAME:
        raise ValueError("request too large")
    body = exact(n)
    nl = body.find(b"\n")
    try:
        dev, ino, _pid = (int(x) for x in body[:nl].split())
    except ValueError:
        raise ValueError("bad header") from None
    env: dict[str, str] = {}
    off = nl + 1
    while True:
        end = body.find(b"\0", off)
        if end < 0:
            raise ValueError("unterminated environment")
        if end == off:
            off += 1
            break
        k, _, v = body[off:end].partition(b"=")
        env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        off = end + 1
    return env, body[off:], (dev, ino)


def _report(env: dict[str, str], plugin: DaemonPlugin, err: io.StringIO) -> None:
    line = json.dumps({"nlportmap": plugin.reported, "via": "daemon", "timings_ms": {
        k: round(v * 1000, 3) for k, v in plugin.timings.items()}}) + "\n"
    if env.get("NLPORTMAP_DEBUG"):
        err.write(line)
    path = env.get("NLPORTMAP_TIMINGS_FILE")
    if path:
        try:
            with open(path, "a") as f:
                f.write(line)
        except OSError as e:
            err.write(f"nlportmap: warning: cannot write {path}: {e}\n")


def _probe_existing(path: str) -> None:
    """Raise :class:`StartupError` if a daemon listens on ``path``; remove a dead one's socket."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        raise StartupError(f"another daemon is listening on {path}")
    except (TimeoutError, ConnectionRefusedError, FileNotFoundError):
        pass
    except OSError as e:
        raise StartupError(f"cannot probe {path}: {e.strerror}") from None
    finally:
        probe.close()
    with suppress(FileNotFoundError):
        os.unlink(path)  # stale socket of a dead daemon


# ----------------------------------------------------------------- server
class Daemon:
    """The server.  ``path``: socket file; ``mode``: its permissions."""

    #: the event loop thread's portal (set by :meth:`warm`) and what stops that thread
    portal: BlockingPortal
    _portal_cm: AbstractContextManager[BlockingPortal] | None

    def __init__(self, path: str = DEFAULT_SOCKET, *, mode: int = 0o600, max_clients: int = 128,
                 verbose: bool = False, idle_exit: float = 0.0) -> None:
        self.path = path
        self.idle_exit = max(idle_exit, 0.0)  # seconds without a request before exiting; 0: never
        self._last_busy = time.monotonic()
        self.mode = mode
        self.verbose = verbose
        self.netns = netns_identity()
        self._slots = threading.BoundedSemaphore(max_clients)
        self.pool = WarmPool()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._active = 0
        self._active_lock = threading.Lock()
        self.test_delay = float(os.environ.get("NLPORTMAP_DAEMON_TEST_DELAY") or 0)
        self._plugin_cls: type[DaemonPlugin] | None = None

    # -- start-up -----------------------------------------------------------
    def warm(self) -> None:
        """Import everything a request needs, compile pyroute2's message classes, open sockets."""
        from . import backends, config, plan, plugin, result, sidefx, skel  # noqa: F401
        from . import migrate  # noqa: F401  (DEL's upstream clean-up)
        import anyio  # noqa: F401
        import msgspec  # noqa: F401
        from .nft import layout as L
        from .nft import netlink as N
        with suppress(ImportError):
            from .ipt import backend as _ipt  # noqa: F401
        for fam in (4, 6):  # first encode of each message class is the slow one
            for i, op in enumerate(L.skeleton(fam, None)):
                N.encode(op, i + 1)
            s, k = L.forward_key(fam, "tcp", None, 1)
            N.encode(N.set_elems(True, N.FAMILY[fam], L.TABLE, s, [(k, k, "warm")]), 1)
        # one event loop for the daemon's lifetime: side effects run there (a new loop
        # per request costs ~0.5 ms); requests' threads submit to it through the portal
        from anyio.from_thread import start_blocking_portal
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.portal.call(self._noop)
        self._plugin_cls = _plugin_class()
        _install_guard()
        _defer_socket_closes()
        self.give_backend(self.take_backend())

    @staticmethod
    async def _noop() -> None:
        return None

    def choose(self, conf: Conf) -> str:
        """:func:`nlportmap.backends.choose` with the nf_tables probe memoized (:meth:`WarmPool.probe`)."""
        from . import backends
        return backends.choose(conf, self.pool.probe)[0]

    def take_backend(self) -> NftBackend:
        return self.pool.take()

    def give_backend(self, b: NftBackend) -> None:
        self.pool.give(b)

    def preflight(self) -> None:
        """Fail fast (before the warm-up): the socket directory, and no live daemon on the path."""
        d = os.path.dirname(self.path)
        if d and not os.path.isdir(d):
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StartupError(f"cannot create the socket directory {d}: {e.strerror}") from None
        _probe_existing(self.path)

    def bind(self) -> None:
        self.preflight()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        except OSError as e:
            s.close()
            raise StartupError(f"cannot bind {self.path}: {e.strerror or e}") from None
        finally:
            os.umask(old)
        self._listener = s
        self._inode = os.stat(self.path).st_ino
        os.chmod(self.path, self.mode)
        s.listen(512)

    def adopt(self, s: socket.socket) -> None:
        """Serve an inherited (socket-activated) listening socket; its file is not ours to remove."""
        self._listener = s
        with suppress(OSError):
            self.path = s.getsockname() or self.path

    def stop(self, *_args: object) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:  # remove the socket file only if it is still ours
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.pool.close()
        cm, self._portal_cm = getattr(self, "_portal_cm", None), None
        if cm is not None:
            cm.__exit__(None, None, None)

    def serve_forever(self) -> None:
        assert self._listener is not None
        self._listener.settimeout(0.5)
        self._last_busy = time.monotonic()
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                if (self.idle_exit and not self._active
                        and time.monotonic() - self._last_busy >= self.idle_exit):
                    _log(f"idle for {self.idle_exit:g}s: exiting (socket activation starts it again)")
                    break
                continue
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED):
                    continue
                if self._stop.is_set():
                    break
                raise
            if not self._slots.acquire(blocking=False):
                self._refuse(conn, "busy: too many concurrent requests")
                conn.close()
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()
        deadline = time.monotonic() + 10
        while self._active and time.monotonic() < deadline:  # let in-flight requests finish
            time.sleep(0.05)

    # -- one connection -----------------------------------------------------
    def _refuse(self, conn: socket.socket, reason: str) -> None:
        if self.verbose:
            _log(f"refused: {reason}")
        with suppress(OSError):
            _send(conn, b"X", reason.encode())

    def _serve_conn(self, conn: socket.socket) -> None:
        with self._active_lock:
            self._active += 1
            self._last_busy = time.monotonic()
        try:
            self._serve_checked(conn)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            # a shim that gave up (deadline) or a client that just connected and left:
            # nothing was started for it; one brief line, never a traceback
            _log(f"client hung up before its request was answered ({type(e).__name__})")
        except Exception as e:  # never let one request kill the daemon
            _log(f"request failed: {type(e).__name__}: {e}")
        finally:
            conn.close()
            with self._active_lock:
                self._active -= 1
                self._last_busy = time.monotonic()
            self._slots.release()

    def _serve_checked(self, conn: socket.socket) -> None:
        t0 = time.perf_counter()
        why = _peer_check(conn, self.netns)
        if why:
            self._refuse(conn, why)
            return
        conn.settimeout(REQUEST_READ_TIMEOUT)
        try:
            env, stdin, claimed = _read_request(conn)
        except ValueError as e:
            self._refuse(conn, f"bad request: {e}")
            return
        if claimed != self.netns:
            self._refuse(conn, "request names another network namespace")
            return
        for k in sorted(set(env) | {k for k in os.environ if k.startswith("NLPORTMAP_")}):
            if (k.startswith("NLPORTMAP_") and k not in PER_REQUEST_ENV
                    and not k.startswith("NLPORTMAP_DAEMON_") and env.get(k) != os.environ.get(k)):
                self._refuse(conn, f"{k} differs from the daemon's")
                return
        conn.settimeout(None)
        _send(conn, b"A")
        if self.verbose:
            _log(f"accepted {env.get('CNI_COMMAND', '?')} {env.get('CNI_CONTAINERID', '')[:12]}")
        if self.test_delay:
            time.sleep(self.test_delay)
        status, out, err = self.run_request(env, stdin, conn, t0)
        with suppress(OSError):  # the shim is gone; it does the work itself
            _send(conn, b"R", struct.pack("!iI", status, len(out)) + out + err)
        if self.verbose:
            _log(f"done {env.get('CNI_COMMAND', '?')} status {status} "
                 f"in {(time.perf_counter() - t0) * 1000:.1f} ms")

    def run_request(self, env: dict[str, str], stdin: bytes, conn: socket.socket | None,
                    t0: float) -> tuple[int, bytes, bytes]:
        """Run one plugin invocation here; returns (status, stdout, stderr)."""
        from .skel import run
        out, err = io.StringIO(), io.StringIO()
        if self._plugin_cls is None:
            raise RuntimeError("Daemon.warm() has not run")
        plugin = self._plugin_cls(self, t0)
        _tls.stderr, _tls.conn = err, conn
        status = 1
        # a directory the caller did not set is its default, never the daemon's own setting:
        # the caller's in-process fallback would use the default (nlportmap.settings.get)
        env = {**{k: "" for k in _CALLER_DIRS}, **env}
        try:
            status = run(env, io.BytesIO(stdin), out, err, plugin)
        finally:
            _tls.stderr = _tls.conn = None
            if plugin.lease is not None:
                if status == 0:
                    self.give_backend(plugin.lease)
                else:
                    plugin.lease.close()
        if plugin.reported:
            _report(env, plugin, err)
        return (status, out.getvalue().encode("utf-8", "surrogateescape"),
                err.getvalue().encode("utf-8", "surrogateescape"))



def _inherited_listener() -> socket.socket | None:
    """The listening socket passed by socket activation (``LISTEN_FDS``/``LISTEN_PID``,
    sd_listen_fds(3)), or None.  The variables are removed either way (children must not
    see them).  Raises :class:`StartupError` if what was passed is not one listening
    AF_UNIX stream socket."""
    pid, fds = os.environ.pop("LISTEN_PID", None), os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or fds is None:
        return None
    try:
        if int(pid) != os.getpid():
            return None  # meant for another process (e.g. our parent)
        n = int(fds)
    except ValueError:
        raise StartupError(f"bad socket activation variables: LISTEN_PID={pid!r} LISTEN_FDS={fds!r}") from None
    if n == 0:
        return None
    if n != 1:
        raise StartupError(f"socket activation passed {n} sockets; expected exactly one")
    try:
        s = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as e:
        raise StartupError(f"socket activation: fd {LISTEN_FDS_START} is not a socket ({e.strerror})") from None
    if (s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM
            or not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        s.detach()
        raise StartupError(f"socket activation: fd {LISTEN_FDS_START} is not a listening Unix stream socket")
    os.set_inheritable(LISTEN_FDS_START, False)
    return s


def _start_healer(flag: bool) -> Healer | None:
    """The self-healing thread (:mod:`nlportmap.heal`), unless switched off."""
    from .heal import Healer, enabled
    if not enabled(flag):
        _log("self-healing off (--no-heal or NLPORTMAP_HEAL=0)")
        return None
    try:
        h = Healer(_log)
    except OSError as e:  # no nf_tables here: nothing to listen to
        _log(f"self-healing off: cannot subscribe to nftables notifications: {e.strerror or e}")
        return None
    h.start()
    _log("self-healing on: restoring recorded mappings when nftables reports them deleted")
    try:  # and the ClusterIPs a service proxy adds between ADDs (nlportmap.vipwatch)
        from .vipwatch import VipWatcher
        h.vips = VipWatcher(_log)
    except OSError as e:
        _log(f"proxy_vips watch off: cannot subscribe to address notifications: {e.strerror or e}")
    return h


def main(socket_path: str | None = None, mode: int = 0o600, max_clients: int = 128,
         verbose: bool = False, idle_exit: float | None = None, heal: bool = True) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, socket-activated, until idle).

    Returns 1 with a one-line error on stderr when it cannot serve; the warm-up's event
    loop thread is stopped first, so the process really exits."""
    if os.geteuid() != 0:
        print("nlportmap daemon: needs root (it programs the firewall)", file=sys.stderr)
        return 1
    path = socket_path or os.environ.get("NLPORTMAP_SOCKET") or DEFAULT_SOCKET
    d = None
    healer = None
    serving = False
    try:
        inherited = _inherited_listener()
        if idle_exit is None:
            idle_exit = DEFAULT_IDLE_EXIT if inherited is not None else 0.0
        d = Daemon(path, mode=mode, max_clients=max_clients, verbose=verbose, idle_exit=idle_exit)
        if inherited is not None:
            d.adopt(inherited)
        else:
            d.preflight()  # before the warm-up: a daemon that cannot serve says so at once
        t = time.perf_counter()
        d.warm()
        sys.stderr = _ThreadStderr(_console())
        signal.signal(signal.SIGTERM, d.stop)
        signal.signal(signal.SIGINT, d.stop)
        if inherited is None:
            d.bind()
        how = "socket-activated, " if inherited is not None else ""
        idle = f", idle exit {idle_exit:g}s" if idle_exit else ""
        _log(f"listening on {d.path} ({how}pid {os.getpid()}, netns inode {d.netns[1]}, "
             f"warm-up {(time.perf_counter() - t) * 1000:.0f} ms{idle})")
        healer = _start_healer(heal)
        serving = True
        d.serve_forever()
    except StartupError as e:
        _console().write(f"nlportmap daemon: {e}\n")
        return 1
    except Exception as e:  # one line, then exit: never a live process that cannot serve
        if serving:
            raise
        _console().write(f"nlportmap daemon: cannot start: {type(e).__name__}: {e}\n")
        return 1
    finally:
        sys.stderr = sys.__stderr__
        if healer is not None:
            healer.stop()
        if d is not None:
            d.close()  # also stops the event loop thread, which would keep the process alive
            if serving:
                _log("stopped")
    return 0
