"""Opt-in check: is a host process already listening on a mapped host port?

Reads sockets over ``NETLINK_SOCK_DIAG`` (``SOCK_DIAG_BY_FAMILY`` dumps of
``struct inet_diag_req_v2``; linux/inet_diag.h, linux/sock_diag.h), not ``ss``.
A TCP socket in LISTEN or an unconnected bound UDP socket on the host port, on
the wildcard address or on the mapping's hostIP (any local address when the
mapping has none), counts as a conflict — unless the process holding it is a
container runtime's placeholder: rootful Podman's ``conmon`` keeps a listening
socket on every published port (../shared/reference/runtimes.md), and DNAT
takes those packets first.  Owners are resolved (``/proc/<pid>/fd`` socket
inodes) only when a listener was found, so the common case costs two dumps.
SCTP sockets are not inspected (the sctp_diag module may be absent).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from .nlmsg import collect

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from .plan import Forward

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_LISTEN = 10
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}

#: default process names (``/proc/<pid>/comm``) whose sockets are runtime placeholders: only
#: those known to hold one per published port (rootful Podman's ``conmon``, rootless Podman's
#: ``rootlessport``).  containerd holds none and CRI-O dropped its port opener, so sockets of
#: ``containerd``, ``crio``, ``dockerd`` or ``podman`` are real services and stay protected.
RUNTIME_PLACEHOLDERS = ("conmon", "rootlessport")


INET_DIAG_SKV6ONLY = 11  # u8 attribute of AF_INET6 sockets (linux/inet_diag.h)


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket bound to a host port: protocol, address (str), port, inode, and for IPv6
    sockets whether they also take IPv4 (``dual``: IPV6_V6ONLY off)."""
    proto: str
    address: str
    port: int
    inode: int
    dual: bool = False


def _dump(family: int, proto: str) -> list[Listener]:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    states = (1 << TCP_LISTEN) if proto == "tcp" else 0xFFFFFFFF
    req = struct.pack("=BBBBI", af, PROTO[proto], 0, 0, states) + bytes(48)
    seq = int.from_bytes(os.urandom(3), "little")
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    msgs: list[bytes] = []
    try:
        s.settimeout(5)
        s.send(msg)
        while not collect(s.recv(1 << 20), seq, msgs):
            pass
    finally:
        s.close()
    out = []
    for m in msgs:
        p = 16
        fam = m[p]
        sport, dport = struct.unpack_from("!HH", m, p + 4)
        src = m[p + 8: p + 8 + (4 if fam == socket.AF_INET else 16)]
        inode = struct.unpack_from("=I", m, p + 68)[0]
        if proto == "udp" and dport != 0:
            continue  # connected UDP socket: a client, not a listener
        dual = False
        if fam == socket.AF_INET6:
            off = 16 + 72  # attributes follow struct inet_diag_msg
            while off + 4 <= len(m):
                ln, ty = struct.unpack_from("=HH", m, off)
                if ln < 4:
                    break
                if ty == INET_DIAG_SKV6ONLY:
                    dual = m[off + 4] == 0
                off += (ln + 3) & ~3
        out.append(Listener(proto, socket.inet_ntop(fam, src), sport, inode, dual))
    return out


def owners(inode: int) -> list[tuple[int, str]]:
    """Processes holding socket ``inode``: [(pid, comm)] (scans /proc; slow path only)."""
    target = f"socket:[{inode}]"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        d = f"/proc/{pid}/fd"
        try:
            for fd in os.listdir(d):
                try:
                    if os.readlink(f"{d}/{fd}") == target:
                        with open(f"/proc/{pid}/comm") as f:
                            found.append((int(pid), f.read().strip()))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return found


def conflicts(forwards: Iterable[Forward], allowed: tuple[str, ...] | list[str] = RUNTIME_PLACEHOLDERS) -> list[str]:
    """Human descriptions of host listeners that clash with ``forwards`` (plan Forwards).

    ``allowed``: process names whose sockets are ignored (runtime placeholders).
    Raises OSError if sock_diag is unusable.
    """
    problems = []
    cache: dict[tuple[int, str], list[Listener]] = {}
    for f in forwards:
        if f.proto not in PROTO:
            continue
        # IPv4 traffic also reaches IPv6 sockets without IPV6_V6ONLY (the default for
        # Go, Java, nginx listening on [::]): check those too for IPv4 forwards
        for dfam in ((4, 6) if f.family == 4 else (6,)):
            key = (dfam, f.proto)
            if key not in cache:
                cache[key] = _dump(dfam, f.proto)
        candidates = [ls for dfam in ((4, 6) if f.family == 4 else (6,)) for ls in cache[(dfam, f.proto)]
                      if dfam == f.family or ls.dual]
        for ls in candidates:
            if ls.port != f.host_port:
                continue
            addr = ipaddress.ip_address(ls.address)
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            if not (addr.is_unspecified or f.host_ip is None or str(addr) == f.host_ip):
                continue
            who = owners(ls.inode)
            if who and all(comm in allowed for _, comm in who):
                continue
            names = ", ".join(f"{comm} (pid {pid})" for pid, comm in who) or "unknown process"
            problems.append(f"{f.proto} {ls.address}:{ls.port} is already in use by {names}")
    return problems
