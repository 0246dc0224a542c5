"""Throw-away network namespaces, owned and always cleaned up by this process.

Everything here acts *only* on namespaces this library created: names are
``<prefix>-<role>-<suffix>`` with a random 6-hex ``suffix`` per topology, and every
``ip`` command is scoped with ``ip -n <name>`` / ``ip netns exec <name>``.  Nothing is
ever configured in the caller's (root) namespace.

Cleanup layers (all idempotent):

1. context managers (``with Netns.create(...)`` / ``with Topology()``);
2. ``atexit`` — anything still registered when the interpreter exits;
3. SIGTERM/SIGHUP — if the signal's handler was the default one, we clean up and
   then re-deliver the signal with the default action;
4. :func:`cleanup_stale` for namespaces left behind by a SIGKILLed run.  Each
   namespace carries its owner (pid + process start time) as the alias of its
   ``lo`` device, so only namespaces whose owner is dead are removed — concurrent
   runs sharing the same prefix are left alone.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

__all__ = [
    "CommandError",
    "Netns",
    "cleanup_stale",
    "new_suffix",
    "owner_tag",
]

T = TypeVar("T")

NETNS_DIR = "/run/netns"
_NAME_PART = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # prefix (may contain dashes)
_ROLE = re.compile(r"^[a-z0-9]{1,20}$")  # role: no dashes, so prefixes never overlap
_SUFFIX = re.compile(r"^[0-9a-f]{6}$")
_OWNER_TAG = "netns-fixtures owner"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def new_suffix() -> str:
    """A random 6-hex per-run suffix (``secrets``-quality)."""
    return os.urandom(3).hex()


def _proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of ``pid``, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # field 22; the comm field (2) may contain spaces, so split after its ')'
    return stat.rpartition(")")[2].split()[19]


def owner_tag(pid: int | None = None) -> str:
    """The ``lo`` alias that marks a namespace as owned by process ``pid``."""
    pid = os.getpid() if pid is None else pid
    return f"{_OWNER_TAG} pid={pid} start={_proc_start_time(pid)}"


class CommandError(subprocess.CalledProcessError):
    """A failed command; unlike CalledProcessError its message includes stderr."""

    def __str__(self) -> str:
        def txt(x: Any) -> str:
            if isinstance(x, bytes):
                x = x.decode(errors="replace")
            return (x or "").strip()

        return (
            f"command {self.cmd!r} exited with {self.returncode}\n"
            f"stdout: {txt(self.output)}\nstderr: {txt(self.stderr)}"
        )


def _run(argv: Sequence[str], *, check: bool = True, input: Any = None,
         env: dict[str, str] | None = None, timeout: float = 30, text: bool = True
         ) -> subprocess.CompletedProcess:
    full_env = None if env is None else {**os.environ, **env}
    cp = subprocess.run(list(argv), input=input, capture_output=True, env=full_env,
                        timeout=timeout, text=text, check=False)
    if check and cp.returncode != 0:
        raise CommandError(cp.returncode, cp.args, cp.stdout, cp.stderr)
    return cp


# --------------------------------------------------------------------------- registry
# Everything alive that this process created, for atexit / signal cleanup.
_OWNER_PID = os.getpid()
_live_ns: dict[str, "Netns"] = {}
_live_procs: dict[int, subprocess.Popen] = {}
_live_dirs: set[str] = set()
_registry_lock = threading.RLock()
_atexit_installed = False
_signals_installed = False


def _register_dir(path: str) -> None:
    with _registry_lock:
        _live_dirs.add(path)


def remove_dir(path: str) -> None:
    """Remove a temp dir created by this library (idempotent)."""
    shutil.rmtree(path, ignore_errors=True)
    with _registry_lock:
        _live_dirs.discard(path)


def kill_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGKILL one process we started (by its PID, via its Popen) and reap it."""
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - D-state; nothing else to do
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    with _registry_lock:
        _live_procs.pop(proc.pid, None)


def cleanup_all() -> None:
    """Kill every process and delete every namespace/temp dir still registered.

    Called from atexit and the signal handlers; safe to call any time (idempotent).
    Does nothing in a forked child, which does not own the parent's resources.
    """
    if os.getpid() != _OWNER_PID:
        return
    with _registry_lock:
        procs = list(_live_procs.values())
        namespaces = list(_live_ns.values())
        dirs = list(_live_dirs)
    for p in procs:
        kill_process(p)
    for ns in reversed(namespaces):
        try:
            ns.delete()
        except Exception:  # keep going: the rest must still be removed
            pass
    for d in dirs:
        remove_dir(d)


def _install_handlers() -> None:
    """atexit always; SIGTERM/SIGHUP only where they still have the default action."""
    global _atexit_installed, _signals_installed
    if not _atexit_installed:
        _atexit_installed = True
        atexit.register(cleanup_all)
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; try next time
    _signals_installed = True
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_DFL:
            continue  # somebody else owns this signal; atexit still covers normal exits

        def handler(signum: int, frame: Any, _sig: int = sig) -> None:
            cleanup_all()
            signal.signal(_sig, signal.SIG_DFL)
            os.kill(os.getpid(), _sig)  # die the way we would have without us

        signal.signal(sig, handler)


# --------------------------------------------------------------------------- Netns
def enter_netns(path: str) -> None:
    """setns() the *calling thread* into the namespace at ``path`` and verify it moved.
    Only for threads of our own that are thrown away afterwards (never a pool thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
        raise RuntimeError(f"setns({path}) did not move this thread")


class Netns:
    """One named network namespace (``/run/netns/<name>``) created by this library.

    Create with :meth:`Netns.create` (or via a :class:`~netns_fixtures.Topology`).
    Attributes: ``name``, ``path`` (what CNI calls ``CNI_NETNS``), ``role``, and, for
    pods, ``ip4``/``ip6`` (filled in by the topology, else None).
    """

    def __init__(self, name: str, role: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad namespace name {name!r}")
        self.name = name
        self.role = role
        self.path = f"{NETNS_DIR}/{name}"
        self.ip4: str | None = None
        self.ip6: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._deleted = False

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # ---- lifecycle
    @classmethod
    def create(cls, prefix: str, role: str, suffix: str | None = None, *,
               lo_up: bool = True) -> "Netns":
        """``ip netns add <prefix>-<role>-<suffix>``, bring ``lo`` up, tag the owner.

        ``prefix``: lowercase alnum words joined by ``-``; ``role``: ``[a-z0-9]{1,20}``;
        ``suffix``: 6 hex (random if omitted).  Raises if the name already exists.
        """
        suffix = new_suffix() if suffix is None else suffix
        if not _NAME_PART.match(prefix):
            raise ValueError(f"prefix {prefix!r} must match {_NAME_PART.pattern}")
        if not _ROLE.match(role):
            raise ValueError(f"role {role!r} must match {_ROLE.pattern}")
        if not _SUFFIX.match(suffix):
            raise ValueError(f"suffix {suffix!r} must be 6 hex digits")
        _install_handlers()
        ns = cls(f"{prefix}-{role}-{suffix}", role)
        _run(["ip", "netns", "add", ns.name])
        with _registry_lock:
            _live_ns[ns.name] = ns
        try:
            ns.ip("link", "set", "dev", "lo", "alias", owner_tag())
            if lo_up:
                ns.ip("link", "set", "dev", "lo", "up")
        except BaseException:
            ns.delete()
            raise
        return ns

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def delete(self) -> None:
        """Kill processes started through :meth:`popen`, then ``ip netns del``. Idempotent."""
        for p in self._procs:
            kill_process(p)
        self._procs.clear()
        if not self._deleted:
            if self.exists():
                cp = _run(["ip", "netns", "del", self.name], check=False)
                if cp.returncode != 0 and self.exists():
                    raise CommandError(cp.returncode, cp.args, cp.stdout, cp.stderr)
            self._deleted = True
        with _registry_lock:
            _live_ns.pop(self.name, None)
            own_dirs = [d for d in _live_dirs
                        if os.path.basename(d).startswith(f"{self.name}-")]
        for d in own_dirs:  # e.g. echo servers' logs
            remove_dir(d)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # ---- running things inside
    def ip(self, *args: str, check: bool = True, json_out: bool = False) -> Any:
        """``ip -n <name> <args>``; with ``json_out`` returns the parsed ``-j`` output."""
        argv = ["ip", "-n", self.name] + (["-j"] if json_out else []) + list(args)
        cp = _run(argv, check=check)
        if json_out:
            return json.loads(cp.stdout or "[]")
        return cp

    def run(self, *argv: str, check: bool = True, input: Any = None,
            env: dict[str, str] | None = None, timeout: float = 30, text: bool = True
            ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace (``ip netns exec``), capture output.

        ``env`` is merged over ``os.environ``.  ``text=False`` for bytes in/out.
        Raises :class:`CommandError` (message includes stderr) when ``check`` and rc != 0.
        """
        self._check_alive()
        return _run(["ip", "netns", "exec", self.name, *argv], check=check,
                    input=input, env=env, timeout=timeout, text=text)

    def popen(self, *argv: str, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in the namespace (``ip netns exec`` execs it, so the Popen's
        PID is the program itself).  The process is killed by PID at :meth:`delete`,
        at topology exit, atexit, or with :func:`kill_process`."""
        self._check_alive()
        full_env = None if env is None else {**os.environ, **env}
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv],
                                env=full_env, **kwargs)
        self._procs.append(proc)
        with _registry_lock:
            _live_procs[proc.pid] = proc
        return proc

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in a throw-away thread that has ``setns()``-ed into this
        namespace; return its result (or raise its exception).

        Sockets created inside ``fn`` stay bound to this namespace when used from
        any thread afterwards; files under ``/proc/sys/net`` opened inside refer to
        this namespace.  The thread dies afterwards, so the caller is never moved.
        """
        self._check_alive()
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                enter_netns(self.path)
                out["value"] = fn()
            except BaseException as e:  # re-raised in the caller
                out["error"] = e

        t = threading.Thread(target=target, name=f"setns-{self.name}", daemon=True)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    def socket(self, family: int, type: int, proto: int = 0) -> "socket.socket":
        """A socket created inside this namespace (usable from any thread)."""
        import socket as _socket
        return self.call(lambda: _socket.socket(family, type, proto))

    def sysctl(self, key: str, value: Any | None = None) -> str:
        """Read (``value=None``) or write a sysctl *of this namespace*; returns the
        value read, or the value written.

        ``key`` is dotted (``net.ipv4.ip_forward``) or slash-separated
        (``net/ipv4/conf/eth0.100/rp_filter``, needed when a name contains a dot).
        """
        path = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))

        def rw() -> str:
            if value is None:
                with open(path) as f:
                    return f.read().strip()
            with open(path, "w") as f:
                f.write(str(value))
            return str(value)

        return self.call(rw)

    def wait_ipv6_settled(self, timeout: float = 5.0, interval: float = 0.05) -> None:
        """Poll until no IPv6 address in this namespace is *tentative* (DAD done);
        raise TimeoutError listing them otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            tentative = [f"{a['local']} on {link['ifname']}"
                         for link in self.ip("-6", "addr", "show", "tentative", json_out=True)
                         for a in link.get("addr_info", [])]
            if not tentative:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: still tentative after {timeout}s: {tentative}")
            time.sleep(interval)

    def _check_alive(self) -> None:
        if self._deleted:
            raise RuntimeError(f"namespace {self.name} was already deleted")


# --------------------------------------------------------------------------- stale cleanup
def list_namespaces() -> list[str]:
    cp = _run(["ip", "-j", "netns", "list"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return []
    return [e["name"] for e in json.loads(cp.stdout)]


def _owner_alive(ns_name: str) -> bool | None:
    """True/False from the lo alias owner tag; None if the namespace has no tag."""
    cp = _run(["ip", "-n", ns_name, "-j", "link", "show", "dev", "lo"], check=False)
    if cp.returncode != 0:
        return None
    try:
        alias = json.loads(cp.stdout)[0].get("ifalias", "")
    except (ValueError, IndexError):
        return None
    m = re.fullmatch(re.escape(_OWNER_TAG) + r" pid=(\d+) start=(\S+)", alias or "")
    if not m:
        return None
    return _proc_start_time(int(m.group(1))) == m.group(2)


def cleanup_stale(prefix: str = "nlpm", *, force: bool = False) -> list[str]:
    """Delete leftover namespaces named ``<prefix>-<role>-<6 hex>`` whose owner
    process is dead (killed runs), plus their temp dirs (``/tmp/<prefix>-<suffix>-*``, ``/tmp/<name>-*``).

    Namespaces of live runs (including concurrent ones with the same prefix) are
    kept.  Untagged namespaces that merely match the name pattern are kept unless
    ``force=True``.  Processes still inside a removed namespace are *not* killed
    (they were not started by this process); echo servers exit by themselves.
    Returns the names deleted.
    """
    if not _NAME_PART.match(prefix):
        raise ValueError(f"prefix {prefix!r} must match {_NAME_PART.pattern}")
    pat = re.compile(rf"^{re.escape(prefix)}-([a-z0-9]{{1,20}})-([0-9a-f]{{6}})$")
    deleted: list[str] = []
    for name in list_namespaces():
        m = pat.match(name)
        if not m or name in _live_ns:
            continue
        alive = _owner_alive(name)
        if alive or (alive is None and not force):
            continue
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            deleted.append(name)
            tmp = tempfile.gettempdir()
            for pattern in (f"{prefix}-{m.group(2)}-*", f"{name}-*"):
                for d in glob.glob(os.path.join(tmp, pattern)):
                    shutil.rmtree(d, ignore_errors=True)
    return deleted


def make_temp_dir(name: str) -> str:
    """A private (0700) temp dir ``/tmp/<name>-XXXX``, removed at cleanup.  Use a
    name starting with ``<prefix>-<suffix>-`` or ``<namespace name>-`` so that
    :func:`cleanup_stale` finds it after a killed run."""
    d = tempfile.mkdtemp(prefix=f"{name}-")
    _register_dir(d)
    return d
