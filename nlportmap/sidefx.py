"""Side effects of ADD that run after the transaction commits, concurrently under anyio.

* Stale conntrack entries: for every UDP/SCTP host port, delete the entries of
  that address family whose original-direction destination port is the host
  port (a previous flow would otherwise keep bypassing the new DNAT).  First
  one kernel-side filtered ``IPCTNL_MSG_CT_DELETE`` (CTA_TUPLE_ORIG partial +
  CTA_FILTER; Linux >= 6.11), else a filtered dump and one delete per entry.
  Failures are logged to stderr, never fatal (upstream behaves the same).
* ``net.ipv4.conf.<if>.route_localnet=1`` on the interface that routes to the
  IPv4 container address (so 127.0.0.1:hostPort can be DNATed out); failure
  is fatal, as upstream.

Constants: ``linux/netfilter/nfnetlink_conntrack.h`` (IPCTNL_MSG_CT_*, CTA_*),
``linux/rtnetlink.h`` (RTM_GETROUTE=26, RTA_DST=1, RTA_OIF=4).
All sockets are created in the calling thread's network namespace.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time

from . import _pyroute2
from .nlmsg import collect

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 2, 1, 3
PROTO_NUM = {"udp": 17, "sctp": 132, "tcp": 6}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}

#: set NLPORTMAP_CT_FALLBACK=1 to skip the kernel-side filtered delete (tests use it)
FORCE_FALLBACK_ENV = "NLPORTMAP_CT_FALLBACK"


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("%Y/%m/%d %H:%M:%S ") + msg + "\n")


def _open(proto: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    s.bind((0, 0))
    s.setblocking(False)
    return s


async def _exchange(s: socket.socket, data: bytes, seq: int, timeout: float = 5.0) -> list[bytes]:
    """Send one request; return the replies for ``seq`` up to DONE/ack (errors raise OSError).

    A plain coroutine (not an async generator) so the cancel scope of the
    deadline is always entered and left in the same task.
    """
    import anyio
    s.send(data)
    out: list[bytes] = []
    with anyio.fail_after(timeout):
        while True:
            await anyio.wait_readable(s)
            try:
                buf = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if collect(buf, seq, out):
                return out


def _ct_msg(mtype: int, flags: int, family: int, proto: int, port: int, seq: int) -> bytes:
    _pyroute2.load()
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg
    flt = NFCTAttrTuple(family=AF[family], proto=proto, dport=port)
    a = flt.attrs()  # sets flt.flags (CTA_FILTER_FLAG_*)
    m = nfct_msg.create_from(tuple_orig={"attrs": a},
                             cta_filter={"attrs": [["CTA_FILTER_ORIG_FLAGS", flt.flags]]})
    m["nfgen_family"] = AF[family]
    m["header"].update(type=(NFNL_SUBSYS_CTNETLINK << 8) | mtype, flags=flags, sequence_number=seq)
    m.encode()
    return bytes(m.data)


def _walk(buf: bytes, off: int, end: int):
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            return
        yield ty & 0x3FFF, off, ln
        off += (ln + 3) & ~3


def _orig_tuple(msg: bytes) -> tuple[bytes, int | None, int | None]:
    """-> (raw CTA_TUPLE_ORIG attribute incl. header, l4 proto, dst port) of a dumped entry."""
    for ty, off, ln in _walk(msg, 20, len(msg)):
        if ty == CTA_TUPLE_ORIG:
            proto = port = None
            for t2, o2, l2 in _walk(msg, off + 4, off + ln):
                if t2 == CTA_TUPLE_PROTO:
                    for t3, o3, l3 in _walk(msg, o2 + 4, o2 + l2):
                        if t3 == CTA_PROTO_NUM:
                            proto = msg[o3 + 4]
                        elif t3 == CTA_PROTO_DST_PORT:
                            port = struct.unpack_from("!H", msg, o3 + 4)[0]
            return msg[off: off + ln], proto, port
    return b"", None, None


async def delete_conntrack(family: int, proto: str, port: int) -> int:
    """Delete conntrack entries (family 4|6, proto udp|sctp, orig dst port ``port``).

    Returns the number deleted in the fallback path, -1 when the kernel-side
    filter did it in one request (the kernel does not report a count).
    Raises OSError on netlink failures.
    """
    pnum = PROTO_NUM[proto]
    s = _open(NETLINK_NETFILTER)
    seq = int.from_bytes(os.urandom(3), "little") << 4
    try:
        if not os.environ.get(FORCE_FALLBACK_ENV):
            try:
                await _exchange(s, _ct_msg(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK,
                                           family, pnum, port, seq), seq)
                return -1
            except OSError as e:
                if e.errno == errno.ENOENT:  # filter matched nothing
                    return -1
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        # fallback: kernel-filtered dump (>= 5.8; older kernels dump all, so re-check here)
        seq += 1
        victims = []
        for raw in await _exchange(s, _ct_msg(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP,
                                              family, pnum, port, seq), seq):
            tup, p, dp = _orig_tuple(raw)
            if tup and p == pnum and dp == port:
                victims.append(tup)
        n = 0
        for tup in victims:
            seq += 1
            body = struct.pack("!BBH", AF[family], 0, 0) + tup
            msg = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                              NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
            try:
                await _exchange(s, msg, seq)
                n += 1
            except OSError as e:
                if e.errno != errno.ENOENT:  # expired meanwhile
                    raise
        return n
    finally:
        s.close()


async def route_oif(addr: str) -> str | None:
    """Name of the output interface of the route to ``addr`` (``ip route get``), or None."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    dst = socket.inet_pton(fam, addr)
    seq = int.from_bytes(os.urandom(3), "little") << 4
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    body = struct.pack("=BBBBBBBBI", fam, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += struct.pack("=HH", 4 + len(dst), 1) + dst  # RTA_DST
    msg = struct.pack("=IHHII", 16 + len(body), 26, NLM_F_REQUEST, seq, 0) + body
    s = _open(NETLINK_ROUTE)
    try:
        for raw in await _exchange(s, msg, seq):
            for ty, off, ln in _walk(raw, 28, len(raw)):
                if ty == 4:  # RTA_OIF
                    idx = struct.unpack_from("=I", raw, off + 4)[0]
                    try:
                        return socket.if_indextoname(idx)
                    except OSError:
                        return None
            return None
    except OSError:
        return None
    finally:
        s.close()
    return None


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


async def enable_route_localnet(container_ip: str) -> str | None:
    """Set route_localnet=1 on the interface routing to ``container_ip``; returns its name.

    Lookup failure or unknown link: silently skipped (None), as upstream.
    Raises OSError if the sysctl write fails.
    """
    ifname = await route_oif(container_ip)
    if not ifname:
        return None
    # '/'-separated path: interface names may contain dots
    write_sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet", "1")
    return ifname


async def run_side_effects(plan, timings: dict | None = None) -> None:
    """All post-commit side effects of ``plan`` in one anyio task group.

    Raises :class:`nlportmap.errors.InternalError` if route_localnet cannot be set.
    Conntrack failures are logged and ignored.
    """
    import anyio
    from .errors import InternalError

    errors: list[str] = []

    async def ct_job(fam, proto, port):
        try:
            await delete_conntrack(fam, proto, port)
        except Exception as e:  # noqa: BLE001 - logged, not fatal (upstream: log.Printf)
            log(f"failed to delete stale {proto.upper()} conntrack entries for ipv{fam} port {port}: {e}")

    async def localnet_job(ip):
        try:
            await enable_route_localnet(ip)
        except OSError as e:
            errors.append(f"unable to enable route_localnet: {e}")

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for fam, proto, port in plan.conntrack_flush:
            tg.start_soon(ct_job, fam, proto, port)
        if plan.route_localnet_ip:
            tg.start_soon(localnet_job, plan.route_localnet_ip)
    if timings is not None:
        timings["side_effects"] = time.perf_counter() - t0
    if errors:
        raise InternalError(errors[0])
