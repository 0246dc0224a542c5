"""The exec'd plugin's hot path: hand the request to ``nlportmap daemon``, else do it here.

A runtime execs the plugin for every ADD/DEL/CHECK.  A fresh Python process that
imports pyroute2, msgspec and anyio spends 100+ ms before it sends anything;
``nlportmap daemon`` (:mod:`nlportmap.daemon`) keeps all of that loaded and its
netlink sockets open.  This module is what the exec'd process runs first:

1. read the request (``CNI_*``/``NLPORTMAP_*`` environment, stdin);
2. connect to the daemon's Unix socket (``$NLPORTMAP_SOCKET``, default
   :data:`DEFAULT_SOCKET`) and send it, with this process's network-namespace
   identity;
3. print the daemon's answer (stdout, stderr, exit status) and exit.

The daemon is believed only when the listener is root (``SO_PEERCRED``) and the
socket's directory is root-owned and not writable by group or others; otherwise
nothing is sent and the request runs in-process.

When anything goes wrong -- no socket (a failed ``connect`` costs microseconds),
nobody listening, the daemon refuses (another network namespace, not root,
different ``NLPORTMAP_*`` settings, overloaded), does not acknowledge within the
*accept deadline*, does not answer within the *result timeout*, or dies
mid-request -- the shim closes the connection and runs the request in-process
(:func:`nlportmap.skel.run` with :class:`nlportmap.plugin.Plugin`), exactly as
without a daemon.  Correctness never depends on the daemon.

Why a late daemon cannot undo the fallback: the daemon mutates kernel state only
while holding the per-netns lock (:mod:`nlportmap.lock`), and checks right after
taking it that the shim is still connected (:mod:`nlportmap.daemon`).  The shim
closes the connection *before* it starts the in-process run, which takes the
same lock.  So every daemon transaction either finished before the in-process one
began, or sees the closed connection and is abandoned.  ADD, DEL and CHECK are
idempotent, so running the work twice is harmless.

Imports on the daemon path: only interpreter built-ins (``sys``, ``time``,
``posix``) and the ``_socket`` C module -- not even ``os`` or ``socket``
(``socket`` alone pulls in ``enum``, ``selectors`` and ``collections``: several
ms).  pyroute2, msgspec and anyio are imported only by the in-process fallback.

Wire protocol (version 1; all integers big-endian)::

    request : b"NLPM" u8 version u32 length, then `length` bytes:
              b"<netns st_dev> <netns st_ino> <pid>\\n"   (of /proc/self/ns/net)
              b"KEY=VALUE\\0" ... b"\\0"                  (CNI_* and NLPORTMAP_* only)
              stdin bytes                                (the rest)
    replies : u8 kind, u32 length, payload
              b"A"  accepted: peer, netns and settings verified, work started
              b"X"  refused: payload = reason; the shim works in-process
              b"R"  result: i32 exit status, u32 n, n bytes stdout, then stderr

Environment (read by the shim):

``NLPORTMAP_SOCKET``
    daemon socket path; empty, ``none`` or ``off`` disables the daemon path.
``NLPORTMAP_DAEMON_DEADLINE``
    seconds for connect + send + the daemon's acknowledgement (default 0.5).
``NLPORTMAP_DAEMON_TIMEOUT``
    seconds for the result once acknowledged (default 90: longer than the
    netns lock's own 30 s, so the daemon reports its own timeout first).
``NLPORTMAP_DEBUG``
    non-empty: note on stderr why the shim worked in-process; a list containing
    ``imports`` (e.g. ``imports`` or ``1,imports``): re-exec under
    ``python -X importtime`` so every module's import time goes to stderr.
``NLPORTMAP_TIMINGS_FILE``
    also gets one line ``{"nlportmap_shim": CMD, "via": "daemon"|"in-process", ...}``.
"""
import sys
import time

import posix as _os  # os's C core: 'import os' costs ~1 ms of a ~9 ms interpreter start
import _socket

from .proto import DEFAULT_SOCKET, MAGIC, MAX_FRAME, PROTOCOL_VERSION, netns_identity

TYPE_CHECKING = False  # annotations only: the daemon path imports built-ins alone
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import BinaryIO

    from .plugin import Plugin

__all__ = [
    "DEFAULT_SOCKET",
    "PROTOCOL_VERSION",
    "encode_request",
    "exchange",
    "launch",
    "netns_identity",
    "plugin_main",
]

DEFAULT_DEADLINE = 0.5
DEFAULT_TIMEOUT = 90.0
_FORWARD = (b"CNI_", b"NLPORTMAP_")


class Fallback(Exception):
    """The daemon cannot serve this request; ``args[0]`` is the reason."""


# ------------------------------------------------------------------ helpers
def _env(name: bytes, default: bytes = b"") -> bytes:
    return _os.environ.get(name, default)


def _float_env(name: bytes, default: float) -> float:
    try:
        v = float(_env(name) or default)
        return v if v > 0 else default
    except ValueError:
        return default


def socket_path() -> bytes | None:
    """The daemon socket to try, or None when the daemon path is disabled."""
    p = _os.environ.get(b"NLPORTMAP_SOCKET")
    if p is None:
        return DEFAULT_SOCKET.encode()
    if p.strip().lower() in (b"", b"none", b"off", b"0"):
        return None
    return p


def encode_request(env: "Mapping[bytes, bytes]", stdin: bytes, netns: tuple[int, int] | None = None,
                   pid: int | None = None) -> bytes:
    """The request frame for ``env`` (bytes -> bytes; only CNI_*/NLPORTMAP_* are sent)."""
    dev, ino = netns or netns_identity()
    parts = [b"%d %d %d\n" % (dev, ino, _os.getpid() if pid is None else pid)]
    for k, v in env.items():
        if k.startswith(_FORWARD) and b"=" not in k:
            parts.append(k + b"=" + v + b"\0")
    parts.append(b"\0")
    parts.append(stdin)
    body = b"".join(parts)
    return MAGIC + bytes([PROTOCOL_VERSION]) + len(body).to_bytes(4, "big") + body


def _recv_exact(s: _socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        s.settimeout(left)
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_reply(s: _socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """One reply frame -> (kind, payload).  Raises TimeoutError, EOFError, OSError."""
    head = _recv_exact(s, 5, deadline)
    n = int.from_bytes(head[1:], "big")
    if n > MAX_FRAME:
        raise EOFError
    return head[:1], _recv_exact(s, n, deadline)


def _untrusted(s: _socket.socket, path: bytes | str) -> str | None:
    """Why the listener at ``path`` (connected socket ``s``) is not to be believed, or None.

    The request carries the container's whole config and the reply becomes our output, so
    the server must be root (``SO_PEERCRED``: the credentials of whoever called listen()),
    and the socket's directory root-owned and not writable by group or others (else
    anyone could have put a socket file there)."""
    cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
    uid = int.from_bytes(cred[4:8], sys.byteorder)
    if uid != 0:
        return f"daemon socket is served by uid {uid}, not root"
    p = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    i = p.rfind(b"/")
    d = p[:i] if i > 0 else (b"/" if i == 0 else b".")
    try:
        st = _os.stat(d)
    except OSError as e:
        return f"cannot stat the daemon socket's directory: {e.strerror}"
    if st.st_uid != 0 or st.st_mode & 0o022:
        return "daemon socket's directory is not root-owned or is writable by group/others"
    return None


def exchange(path: bytes | str, frame: bytes, deadline: float = DEFAULT_DEADLINE,
             timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes, bytes]:
    """Send one request frame to the daemon at ``path``; return (status, stdout, stderr).

    Raises :class:`Fallback` (reason text) whenever the daemon did not serve it.
    The connection is always closed before this returns or raises.
    """
    t_end = time.monotonic() + deadline
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError as e:
        raise Fallback(f"socket: {e}") from None
    try:
        try:
            s.settimeout(deadline)
            s.connect(path)
            why = _untrusted(s, path)  # before a byte of the request leaves this process
            if why:
                raise Fallback(why)
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass  # a daemon that refuses early may close first: its reason is still readable
            kind, payload = read_reply(s, t_end)
        except FileNotFoundError:
            raise Fallback("no daemon socket") from None
        except ConnectionRefusedError:
            raise Fallback("nobody listening on the daemon socket") from None
        except PermissionError:
            raise Fallback("no permission to use the daemon socket") from None
        except (TimeoutError, _socket.timeout):
            raise Fallback(f"daemon did not accept within {deadline:g}s") from None
        except (EOFError, OSError) as e:
            raise Fallback(f"daemon hung up before accepting ({type(e).__name__})") from None
        if kind == b"X":
            raise Fallback("daemon refused: " + payload.decode("ascii", "replace"))
        if kind != b"A":
            raise Fallback("daemon protocol error")
        try:
            kind, payload = read_reply(s, time.monotonic() + timeout)
        except (TimeoutError, _socket.timeout):
            raise Fallback(f"daemon did not answer within {timeout:g}s") from None
        except (EOFError, OSError) as e:
            raise Fallback(f"daemon died mid-request ({type(e).__name__})") from None
        if kind != b"R" or len(payload) < 8:
            raise Fallback("daemon protocol error")
        status = int.from_bytes(payload[:4], "big", signed=True)
        n = int.from_bytes(payload[4:8], "big")
        return status, payload[8:8 + n], payload[8 + n:]
    finally:
        s.close()  # before any in-process work: the daemon's guard sees the hang-up


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = _os.write(fd, view)
        view = view[n:]


def _read_stdin() -> bytes:
    chunks: list[bytes] = []
    while True:
        b = _os.read(0, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _note(command: bytes, via: str, reason: str, t0: float, detached: bool = False) -> None:
    """Timings line for NLPORTMAP_TIMINGS_FILE (hand-written JSON: no json import here)."""
    path = _env(b"NLPORTMAP_TIMINGS_FILE")
    if not path:
        return
    reason = reason.replace("\\", "\\\\").replace('"', '\\"')
    cmd = command.decode("ascii", "replace").replace('"', "")
    ms = (time.perf_counter() - t0) * 1000
    line = (f'{{"nlportmap_shim": "{cmd}", "via": "{via}", "reason": "{reason}", "shim_ms": {ms:.3f}, '
            f'"detached_release": {"true" if detached else "false"}}}\n').encode()
    try:
        fd = _os.open(path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT | _os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, line)
        finally:
            _os.close(fd)
    except OSError:
        pass


def _debug_flags() -> list[bytes]:
    return [f.strip() for f in _env(b"NLPORTMAP_DEBUG").split(b",") if f.strip()]


def _reexec_importtime() -> None:
    """NLPORTMAP_DEBUG=imports: run this same command again under ``-X importtime``."""
    if "importtime" in sys._xoptions:
        return
    argv = [sys.executable, "-X", "importtime"]
    if sys.flags.isolated:
        argv.append("-I")
    if sys.flags.no_site:
        argv.append("-S")
    if sys.argv and sys.argv[0].endswith("__main__.py"):
        argv += ["-m", "nlportmap", *sys.argv[1:]]
    else:
        argv += sys.argv
    try:
        _os.execv(sys.executable, argv)
    except OSError:
        pass  # keep going without the report


# --------------------------------------------------------------------- entry
def plugin_main(t0: float | None = None) -> int:
    """Serve one CNI invocation (CNI_COMMAND is set): daemon first, else in-process."""
    if t0 is None:
        t0 = time.perf_counter()
    flags = _debug_flags()
    if b"imports" in flags:
        _reexec_importtime()
    command = _env(b"CNI_COMMAND")
    if command == b"VERSION":  # constant: no stdin, no environment checks, no daemon (skel agrees)
        from .versions import version_output
        _write_all(1, version_output().encode())
        _note(command, "shim", "", t0)
        return 0
    stdin = b""
    stdin_err = False
    if command != b"VERSION":  # VERSION never reads stdin (runtimes may leave it open)
        try:
            stdin = _read_stdin()
        except OSError:
            stdin_err = True  # let skel.run report it (code 5) in-process
    reason = "stdin unreadable"
    path = None if stdin_err else socket_path()
    if path is None and not stdin_err:
        reason = "daemon disabled (NLPORTMAP_SOCKET)"
    if path is not None:
        try:
            frame = encode_request(_os.environ, stdin)
            status, out, err = exchange(path, frame, _float_env(b"NLPORTMAP_DAEMON_DEADLINE", DEFAULT_DEADLINE),
                                        _float_env(b"NLPORTMAP_DAEMON_TIMEOUT", DEFAULT_TIMEOUT))
        except Fallback as e:
            reason = str(e)
        except OSError as e:  # e.g. /proc not mounted: cannot prove the namespace
            reason = f"cannot build the request: {e}"
        else:
            _write_all(1, out)
            if err:
                _write_all(2, err)
            _note(command, "daemon", "", t0)
            return status
    if flags:
        _write_all(2, f"nlportmap: shim: {reason}; working in-process\n".encode())
    status, plugin = _in_process(stdin, None if not stdin_err else _Unreadable(), t0)
    # (``plugin`` keeps its sockets open until the exit); NLPORTMAP_DETACHED_EXIT=0: exit
    # normally, e.g. where nothing reaps orphans (a container whose PID 1 is no init)
    detach = plugin.holds_netlink and _env(b"NLPORTMAP_DETACHED_EXIT", b"1") != b"0"
    _note(command, "in-process", reason, t0, detach)
    if detach:
        _exit_detached(status)
    return status


def _exit_detached(status: int) -> None:
    """Exit now, leaving the release of our netlink sockets to a child.

    Shortly after any transaction in this netns that deleted objects (ours or another
    program's), the kernel's release of a NETLINK_NETFILTER socket waits for nf_tables'
    RCU-deferred cleanup (its NETLINK_URELEASE notifier flushes that work): 5-20 ms in
    which the runtime would wait for this process although its answer is written.  The child holds
    the last reference to the sockets, closes stdin/stdout/stderr first (so the
    runtime sees EOF when we exit) and pays the wait; init or the runtime's subreaper
    reaps it.  Output was flushed by the caller."""
    try:
        pid = _os.fork()
    except OSError:
        return  # exit normally, and wait
    if pid == 0:
        for fd in (0, 1, 2):
            try:
                _os.close(fd)
            except OSError:
                pass
        _os._exit(0)
    _os._exit(status)


def _in_process(stdin: bytes, stream: "BinaryIO | _Unreadable | None", t0: float) -> "tuple[int, Plugin]":
    """Run the request here: (exit status, the handlers, which still hold their sockets:
    see :func:`_exit_detached`)."""
    import io
    from .plugin import Plugin
    from .skel import run
    # a runtime that closed our stdout/stderr (Python then sets them to None) still gets
    # the work done: output goes nowhere, the exit status still tells
    out = sys.stdout if sys.stdout is not None else io.StringIO()
    err = sys.stderr if sys.stderr is not None else io.StringIO()
    out.flush()
    env = {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
           for k, v in _os.environ.items()}  # os.environ without importing os (~1 ms)
    plugin = Plugin(t0=t0, cold=True)
    status = run(env, stream if stream is not None else io.BytesIO(stdin), out, err, plugin, lean=True)
    for s in (out, err):
        try:
            s.flush()
        except OSError:
            pass
    return status, plugin


class _Unreadable:
    """stdin that could not be read (closed: EBADF): skel reports code 5."""

    def read(self) -> bytes:
        raise OSError(9, "Bad file descriptor")


def launch() -> int:
    """Entry of the generated launcher (:mod:`nlportmap.launcher`), run as ``python -I -S``.

    The plugin path stays on built-in modules; the operator CLI first runs
    ``site`` (``.pth`` files, editable installs) like a normal interpreter.
    """
    t0 = time.perf_counter()
    if b"CNI_COMMAND" in _os.environ:
        return plugin_main(t0)
    import site
    site.main()
    from .cli import main
    return main(sys.argv[1:])
