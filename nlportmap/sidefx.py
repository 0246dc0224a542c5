"""Side effects of ADD (and DEL) that run after the transaction commits.

Two runners share the message encoders and parsers below: :func:`run_side_effects`
(concurrently under anyio, for the daemon's long-lived loop and many conntrack
deletions at once) and :func:`run_side_effects_sync` (one after another on
blocking sockets, for the cold exec'd process: starting an event loop costs
more there -- asyncio's import alone is ~10 ms -- than the one sysctl write and
the few conntrack messages of an ADD take; docs/performance.md).

* Stale conntrack entries: for every UDP/SCTP host port, delete the entries of
  that address family whose original-direction destination port is the host
  port (a previous flow would otherwise keep bypassing the new DNAT).  First
  one kernel-side filtered ``IPCTNL_MSG_CT_DELETE`` (CTA_TUPLE_ORIG partial +
  CTA_FILTER; Linux >= 6.11), else a filtered dump and one delete per entry.
  Failures are logged to stderr, never fatal (upstream behaves the same).
* DEL (:func:`delete_pod_flows_sync` / :func:`delete_pod_flows`): the UDP/SCTP entries
  whose original destination port is one of the deleted pod's host ports and whose
  reply-direction source is the pod (``CTA_FILTER_REPLY_FLAGS``); same two paths.
* ``net.ipv4.conf.<if>.route_localnet=1`` on the interface that routes to the
  IPv4 container address (so 127.0.0.1:hostPort can be DNATed out); failure
  is fatal, as upstream.

Constants: ``linux/netfilter/nfnetlink_conntrack.h`` (IPCTNL_MSG_CT_*, CTA_*),
``linux/rtnetlink.h`` (RTM_GETROUTE=26, RTA_DST=1, RTA_OIF=4).
All sockets are created in the calling thread's network namespace.
"""
from __future__ import annotations

import errno
import struct
import sys
import time

import _socket as socket
import posix

from .nft.wire import release
from .nlmsg import collect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

    from .plan import Plan

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


def _open(proto: int, blocking: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    s.bind((0, 0))
    if blocking:
        s.settimeout(5.0)
    else:
        s.setblocking(False)
    return s


def _seq() -> int:
    return int.from_bytes(posix.urandom(3), "little") << 4


def _exchange_sync(s: socket.socket, data: bytes, seq: int) -> list[bytes]:
    """:func:`_exchange` on a blocking socket (its timeout bounds each recv)."""
    s.send(data)
    out: list[bytes] = []
    while True:
        if collect(s.recv(1 << 20), seq, out):
            return out


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


CTA_FILTER, NLA_F_NESTED = 25, 0x8000
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2   # enum ctattr_filter
CTA_TUPLE_REPLY, CTA_TUPLE_IP = 2, 1                   # enum ctattr_type, enum ctattr_tuple
CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 3                    # enum ctattr_ip
#: CTA_FILTER_FLAG_CTA_PROTO_NUM | CTA_FILTER_FLAG_CTA_PROTO_DST_PORT (nfnetlink_conntrack.h)
_FILTER_PROTO_DPORT = (1 << 3) | (1 << 5)
#: CTA_FILTER_FLAG_CTA_IP_SRC (nfnetlink_conntrack.h)
_FILTER_IP_SRC = 1 << 0


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _ct_msg(mtype: int, flags: int, family: int, proto: int, port: int, seq: int,
            reply_src: bytes | None = None) -> bytes:
    """A ctnetlink request matching the original tuple's L4 protocol and destination port:
    ``CTA_TUPLE_ORIG { CTA_TUPLE_PROTO { CTA_PROTO_NUM u8, CTA_PROTO_DST_PORT be16 } }``
    plus ``CTA_FILTER { CTA_FILTER_ORIG_FLAGS u32 }`` (the kernel filters on these fields).
    Byte-identical to pyroute2's ``nfct_msg`` encoding (tests/unit/test_sidefx_encoding.py).
    With ``reply_src`` (packed address: the pod, for DEL) also the reply tuple's source:
    ``CTA_TUPLE_REPLY { CTA_TUPLE_IP { CTA_IP_V4_SRC | CTA_IP_V6_SRC } }`` and
    ``CTA_FILTER_REPLY_FLAGS = CTA_FILTER_FLAG_CTA_IP_SRC``."""
    tup = _nla(CTA_TUPLE_ORIG, _nla(CTA_TUPLE_PROTO, _nla(CTA_PROTO_NUM, bytes((proto,)))
                                    + _nla(CTA_PROTO_DST_PORT, struct.pack("!H", port))))
    fl = _nla(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", _FILTER_PROTO_DPORT))
    if reply_src is not None:
        src = CTA_IP_V4_SRC if family == 4 else CTA_IP_V6_SRC
        tup += _nla(CTA_TUPLE_REPLY, _nla(CTA_TUPLE_IP, _nla(src, reply_src)))
        fl += _nla(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", _FILTER_IP_SRC))
    flt = _nla(CTA_FILTER | NLA_F_NESTED, fl)
    body = struct.pack("!BBH", AF[family], 0, 0) + tup + flt
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | mtype, flags, seq, 0) + body


def _walk(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            return
        yield ty & 0x3FFF, off, ln
        off += (ln + 3) & ~3


def _reply_src(msg: bytes) -> bytes | None:
    """The reply-direction source address of a dumped entry (packed), or None."""
    for ty, off, ln in _walk(msg, 20, len(msg)):
        if ty == CTA_TUPLE_REPLY:
            for t2, o2, l2 in _walk(msg, off + 4, off + ln):
                if t2 == CTA_TUPLE_IP:
                    for t3, o3, l3 in _walk(msg, o2 + 4, o2 + l2):
                        if t3 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                            return msg[o3 + 4: o3 + l3]
    return None


def _orig_tuple(msg: bytes) -> tuple[bytes, int | None, int | None]:
    """-> (raw CTA_TUPLE_ORIG attribute incl. header, l4 proto, dst port) of a dumped entry."""
    for ty, off, ln in _walk(msg, 20, len(msg)):
        if ty == CTA_TUPLE_ORIG:
            proto = port = None
            for t2, o2, l2 in _walk(msg, off + 4, off + ln):
                if t2 == CTA_TUPLE_PROTO:
                    for t3, o3, _ in _walk(msg, o2 + 4, o2 + l2):
                        if t3 == CTA_PROTO_NUM:
                            proto = msg[o3 + 4]
                        elif t3 == CTA_PROTO_DST_PORT:
                            port = struct.unpack_from("!H", msg, o3 + 4)[0]
            return msg[off: off + ln], proto, port
    return b"", None, None


# Each kernel exchange below is written once, as a generator that yields
# ``(request bytes, seq)`` and receives the replies (or has the OSError thrown in);
# :func:`_drive_sync` and :func:`_drive_async` run it on a blocking or an anyio socket.
if TYPE_CHECKING:
    from typing import TypeVar
    T = TypeVar("T")
    Steps = Generator[tuple[bytes, int], list[bytes], T]


def _ct_delete_steps(family: int, proto: str, port: int, force_fallback: bool,
                     reply_src: bytes | None = None) -> Steps[int]:
    """Delete the entries of ``family`` whose original tuple has ``proto`` and destination
    port ``port`` (and, with ``reply_src``, whose reply tuple's source is that address)."""
    pnum = PROTO_NUM[proto]
    seq = _seq()
    if not force_fallback:
        try:
            yield _ct_msg(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family, pnum, port, seq, reply_src), seq
            return -1
        except OSError as e:
            if e.errno == errno.ENOENT:  # filter matched nothing
                return -1
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    # fallback: kernel-filtered dump (>= 5.8; older kernels dump all, so re-check here)
    seq += 1
    victims = []
    for raw in (yield _ct_msg(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, pnum, port, seq, reply_src),
                seq):
        tup, p, dp = _orig_tuple(raw)
        if tup and p == pnum and dp == port and (reply_src is None or _reply_src(raw) == reply_src):
            victims.append(tup)
    n = 0
    for tup in victims:
        seq += 1
        body = struct.pack("!BBH", AF[family], 0, 0) + tup
        msg = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                          NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
        try:
            yield msg, seq
            n += 1
        except OSError as e:
            if e.errno != errno.ENOENT:  # expired meanwhile
                raise
    return n


def _route_oif_steps(addr: str) -> Steps[str | None]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    dst = socket.inet_pton(fam, addr)
    seq = _seq()
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    body = struct.pack("=BBBBBBBBI", fam, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += struct.pack("=HH", 4 + len(dst), 1) + dst  # RTA_DST
    msg = struct.pack("=IHHII", 16 + len(body), 26, NLM_F_REQUEST, seq, 0) + body
    try:
        replies = yield msg, seq
    except OSError:
        return None
    for raw in replies:
        for ty, off, _ in _walk(raw, 28, len(raw)):
            if ty == 4:  # RTA_OIF
                idx = struct.unpack_from("=I", raw, off + 4)[0]
                try:
                    return socket.if_indextoname(idx)
                except OSError:
                    return None
        return None
    return None


def _drive_sync(steps: Steps[T], s: socket.socket, keep: list[socket.socket] | None = None) -> T:
    try:
        req = next(steps)
        while True:
            try:
                replies = _exchange_sync(s, *req)
            except OSError as e:
                req = steps.throw(e)
                continue
            req = steps.send(replies)
    except StopIteration as stop:
        value: T = stop.value  # the generator's return value
        return value
    finally:
        if keep is None:
            s.close()
        else:
            keep.append(s)  # released at process exit (see shim._exit_detached)


async def _drive_async(steps: Steps[T], s: socket.socket) -> T:
    try:
        req = next(steps)
        while True:
            try:
                replies = await _exchange(s, *req)
            except OSError as e:
                req = steps.throw(e)
                continue
            req = steps.send(replies)
    except StopIteration as stop:
        value: T = stop.value  # the generator's return value
        return value
    finally:
        release(s)  # the daemon closes off the request path (nlportmap.nft.wire.set_closer)


def _force_fallback() -> bool:
    return bool(posix.environ.get(FORCE_FALLBACK_ENV.encode()))


async def delete_conntrack(family: int, proto: str, port: int, reply_src: bytes | None = None) -> int:
    """Delete conntrack entries (family 4|6, proto udp|sctp, orig dst port ``port``;
    with ``reply_src``, a packed address, only those whose reply source it is).

    Returns the number deleted in the fallback path, -1 when the kernel-side
    filter did it in one request (the kernel does not report a count).
    Raises OSError on netlink failures.
    """
    return await _drive_async(_ct_delete_steps(family, proto, port, _force_fallback(), reply_src),
                              _open(NETLINK_NETFILTER))


def delete_conntrack_sync(family: int, proto: str, port: int, reply_src: bytes | None = None,
                          keep: list[socket.socket] | None = None) -> int:
    """:func:`delete_conntrack` on a blocking socket (cold path).  With ``keep``, the socket
    is appended to it instead of closed: closing a NETLINK_NETFILTER socket can wait for
    nf_tables' deferred cleanup, which an exec'd process leaves to its exit."""
    return _drive_sync(_ct_delete_steps(family, proto, port, _force_fallback(), reply_src),
                       _open(NETLINK_NETFILTER, blocking=True), keep)


async def route_oif(addr: str) -> str | None:
    """Name of the output interface of the route to ``addr`` (``ip route get``), or None."""
    try:
        s = _open(NETLINK_ROUTE)
    except OSError:
        return None
    return await _drive_async(_route_oif_steps(addr), s)


def route_oif_sync(addr: str) -> str | None:
    """:func:`route_oif` on a blocking socket (cold path)."""
    try:
        s = _open(NETLINK_ROUTE, blocking=True)
    except OSError:
        return None
    return _drive_sync(_route_oif_steps(addr), s)


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _localnet_on(ifname: str | None) -> str | None:
    if not ifname:
        return None
    # '/'-separated path: interface names may contain dots
    write_sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet", "1")
    return ifname


async def enable_route_localnet(container_ip: str) -> str | None:
    """Set route_localnet=1 on the interface routing to ``container_ip``; returns its name.

    Lookup failure or unknown link: silently skipped (None), as upstream.
    Raises OSError if the sysctl write fails.
    """
    return _localnet_on(await route_oif(container_ip))


def _ct_failed(fam: int, proto: str, port: int, e: Exception) -> None:
    log(f"failed to delete stale {proto.upper()} conntrack entries for ipv{fam} port {port}: {e}")


def run_side_effects_sync(plan: Plan, keep: list[socket.socket] | None = None) -> None:
    """All post-commit side effects of ``plan``, one after another (cold exec path);
    netfilter sockets go to ``keep`` rather than being closed (see delete_conntrack_sync).

    Same outcome and errors as :func:`run_side_effects`: raises
    :class:`nlportmap.errors.InternalError` if route_localnet cannot be set;
    conntrack failures are logged and ignored.
    """
    for fam, proto, port in plan.conntrack_flush:
        try:
            delete_conntrack_sync(fam, proto, port, keep=keep)
        except Exception as e:
            _ct_failed(fam, proto, port, e)
    if plan.route_localnet_ip:
        try:
            _localnet_on(route_oif_sync(plan.route_localnet_ip))
        except OSError as e:
            from .errors import InternalError
            raise InternalError(f"unable to enable route_localnet: {e}") from None


async def run_side_effects(plan: Plan, timings: dict[str, float] | None = None) -> None:
    """All post-commit side effects of ``plan`` in one anyio task group.

    Raises :class:`nlportmap.errors.InternalError` if route_localnet cannot be set.
    Conntrack failures are logged and ignored.
    """
    import anyio
    from .errors import InternalError

    errors: list[str] = []

    async def ct_job(fam: int, proto: str, port: int) -> None:
        try:
            await delete_conntrack(fam, proto, port)
        except Exception as e:
            _ct_failed(fam, proto, port, e)

    async def localnet_job(ip: str) -> None:
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


# ----------------------------------------------------------------------- DEL
def _flow_failed(fam: int, proto: str, port: int, pod: str, e: Exception) -> None:
    log(f"warning: failed to delete {proto.upper()} conntrack entries of ipv{fam} port {port} "
        f"to the deleted pod {pod}: {e}")


def _pod_flows(flows: Iterable[tuple[int, str, int, str]]) -> list[tuple[int, str, int, str, bytes]]:
    """Distinct UDP/SCTP ``(family, proto, host port, pod IP, packed pod IP)``."""
    out = []
    for fam, proto, port, pod in sorted(set(flows), key=str):
        if proto in ("udp", "sctp"):
            out.append((fam, proto, port, pod, socket.inet_pton(AF[fam], pod)))
    return out


def delete_pod_flows_sync(flows: Iterable[tuple[int, str, int, str]], keep: list[socket.socket] | None = None) -> None:
    """DEL: delete the UDP/SCTP conntrack entries whose original destination port is a
    host port of the deleted pod and whose reply source is the pod, for each
    ``(family, proto, host port, pod IP)`` in ``flows`` (one after another: cold path).
    Entries left behind would keep sending that client's datagrams to the gone pod, and
    hide them from anything that takes the port next, until they expire.  Failures
    (conntrack unavailable...) are logged as warnings, never raised: DEL must succeed."""
    for fam, proto, port, pod, packed in _pod_flows(flows):
        try:
            delete_conntrack_sync(fam, proto, port, packed, keep)
        except Exception as e:  # DEL never fails for conntrack
            _flow_failed(fam, proto, port, pod, e)


async def delete_pod_flows(flows: Iterable[tuple[int, str, int, str]]) -> None:
    """:func:`delete_pod_flows_sync`, concurrently under anyio (daemon)."""
    import anyio

    async def job(fam: int, proto: str, port: int, pod: str, packed: bytes) -> None:
        try:
            await delete_conntrack(fam, proto, port, packed)
        except Exception as e:  # DEL never fails for conntrack
            _flow_failed(fam, proto, port, pod, e)

    async with anyio.create_task_group() as tg:
        for f in _pod_flows(flows):
            tg.start_soon(job, *f)
