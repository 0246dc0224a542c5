"""The addresses a service proxy put on its dummy interfaces (ClusterIPs in IPVS mode).

kube-proxy in IPVS mode puts every Service ClusterIP on ``kube-ipvs0``,
kube-router on ``kube-dummy-if``: each is then a *local* address of the node,
and a hostPort mapping without ``hostIP`` ("any local address") would capture
``ClusterIP:hostPort``.  The nftables backend keeps these addresses in the set
``proxy_vips`` and skips them before its any-address map (see
:mod:`nlportmap.nft.layout`).  This module reads them.

:func:`proxy_addresses` costs one ``NETLINK_ROUTE`` socket and one round trip of
``RTM_GETLINK`` *gets* by name (all names in one write; ``ENODEV`` = the
interface does not exist), then, only for an interface that exists, one
``RTM_GETADDR`` dump that the kernel filters by interface index
(``NETLINK_GET_STRICT_CHK``): it returns that interface's addresses and nothing
else.  No ruleset or full address dump.

Stdlib only, and only ``_socket`` and ``struct``: a lean exec path imports this
module, so importing it must cost next to nothing (no ``socket``, ``ipaddress``,
``dataclasses``, pyroute2 or msgspec).  The socket is opened in the calling
thread's network namespace.
"""

import _socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover  (no __future__ import here: it would cost a module; string annotations)
    from collections.abc import Iterable, Iterator

__all__ = ["proxy_addresses"]

# Which interfaces to read is configuration: serviceProxyInterfaces, default
# nlportmap.config.DEFAULT_SERVICE_PROXY_INTERFACES (kube-ipvs0, kube-dummy-if).

# linux/netlink.h
NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_MULTI = 0x1, 0x2
NLM_F_DUMP = 0x300                     # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR, NLMSG_DONE = 2, 3
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12            # the kernel filters dumps by the header's fields
# linux/rtnetlink.h (enum rtm_types; RTEXT_FILTER_*)
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTEXT_FILTER_SKIP_STATS = 1 << 3
# linux/if_link.h (enum IFLA_*)
IFLA_IFNAME, IFLA_EXT_MASK = 3, 29
# linux/if_addr.h (enum IFA_*): IFA_LOCAL is the local address of a point-to-point
# address, whose IFA_ADDRESS is then the peer; otherwise only or both equal.
IFA_ADDRESS, IFA_LOCAL = 1, 2
# linux/socket.h
AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
# errno
ENODEV = 19
#: IFNAMSIZ (16, linux/if.h) minus the NUL: a longer name cannot exist
IFNAME_MAX = 15

_HDR = struct.Struct("=IHHII")         # struct nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")     # struct ifinfomsg: family, pad, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")      # struct ifaddrmsg: family, prefixlen, flags, scope, index
_NLA = struct.Struct("=HH")            # struct nlattr: len, type


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n % 4)


def getlink_request(name: str, seq: int) -> bytes:
    """RTM_GETLINK *get* (not a dump) of interface ``name``, without statistics."""
    body = (_IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
            + _nla(IFLA_IFNAME, name.encode() + b"\0")
            + _nla(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS)))
    return _HDR.pack(16 + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def getaddr_request(ifindex: int, seq: int) -> bytes:
    """RTM_GETADDR dump of both families, restricted by the kernel to ``ifindex``
    (the socket must have NETLINK_GET_STRICT_CHK set, else the kernel ignores the index)."""
    body = _IFADDR.pack(AF_UNSPEC, 0, 0, 0, ifindex)
    return _HDR.pack(16 + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        ln, ty = _NLA.unpack_from(buf, off)
        if ln < 4:
            break
        out[ty & 0x3FFF] = buf[off + 4:off + ln]
        off += (ln + 3) & ~3
    return out


def messages(buf: bytes) -> "Iterator[tuple[int, int, int, bytes]]":
    """(type, flags, seq, message bytes) of each netlink message in ``buf``."""
    off = 0
    while off + 16 <= len(buf):
        ln, typ, flags, seq, _ = _HDR.unpack_from(buf, off)
        if ln < 16 or off + ln > len(buf):
            break
        yield typ, flags, seq, buf[off:off + ln]
        off += (ln + 3) & ~3


def error_code(msg: bytes) -> int:
    """The positive errno of an NLMSG_ERROR message (0 = ack)."""
    code: int = -struct.unpack_from("=i", msg, 16)[0]
    return code


def link_index(msg: bytes) -> int:
    """``ifi_index`` of an RTM_NEWLINK message."""
    index: int = _IFINFO.unpack_from(msg, 16)[2]
    return index


def address_of(msg: bytes, ifindex: int | None = None) -> tuple[int, bytes] | None:
    """(4 or 6, address bytes in network order) of an RTM_NEWADDR message, or None
    for another family or (when given) another interface."""
    family, _, _, _, index = _IFADDR.unpack_from(msg, 16)
    if family not in (AF_INET, AF_INET6) or (ifindex is not None and index != ifindex):
        return None
    a = _attrs(msg, 16 + _IFADDR.size, len(msg))
    addr = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    n = 4 if family == AF_INET else 16
    if addr is None or len(addr) != n:
        return None
    return (4 if family == AF_INET else 6), addr


class _Conn:
    def __init__(self, timeout: float):
        s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            for opt in (NETLINK_GET_STRICT_CHK, NETLINK_EXT_ACK):
                # without strict checking (kernels < 4.20) the dump is not filtered: address_of() filters
                try:
                    s.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass
            s.bind((0, 0))
            s.settimeout(timeout)
        except BaseException:
            s.close()
            raise
        self.s = s

    def exchange(self, reqs: list[bytes], seqs: list[int]) -> dict[int, list[bytes] | int]:
        """Send ``reqs`` in one write; {seq: [messages] | errno} once each has ended
        (a get: its one reply; a dump: NLMSG_DONE; either: an error)."""
        self.s.send(b"".join(reqs))
        out: dict[int, list[bytes] | int] = {q: [] for q in seqs}
        pending = set(seqs)
        while pending:
            for typ, flags, seq, msg in messages(self.s.recv(1 << 16)):
                if seq not in pending:
                    continue
                if typ == NLMSG_ERROR:
                    out[seq] = error_code(msg)
                    pending.discard(seq)
                elif typ == NLMSG_DONE:
                    pending.discard(seq)
                else:
                    got = out[seq]
                    assert not isinstance(got, int)  # pending: no error stored yet
                    got.append(msg)
                    if not flags & NLM_F_MULTI:
                        pending.discard(seq)
        return out


def proxy_addresses(names: "Iterable[str]", timeout: float = 5.0) -> dict[int, list[bytes]]:
    """``{4: [4-byte addresses], 6: [16-byte addresses]}`` on the interfaces ``names``
    (absent interfaces contribute nothing; ``names`` empty: no socket at all).

    Raises ``OSError`` (including ``TimeoutError``) if the kernel refuses or does
    not answer; the caller decides (ADD fails rather than leave ClusterIPs exposed).
    """
    out: dict[int, list[bytes]] = {4: [], 6: []}
    names = [n for n in dict.fromkeys(names) if n and len(n.encode()) <= IFNAME_MAX]
    if not names:
        return out
    conn = _Conn(timeout)
    try:
        seqs = list(range(1, len(names) + 1))
        got = conn.exchange([getlink_request(n, q) for n, q in zip(names, seqs, strict=True)], seqs)
        indexes = []
        for name, q in zip(names, seqs, strict=True):
            r = got[q]
            if isinstance(r, int):
                if r == ENODEV:
                    continue
                raise OSError(r, f"RTM_GETLINK {name}: error {r}")
            for msg in r:
                if _HDR.unpack_from(msg)[1] == RTM_NEWLINK:
                    indexes.append(link_index(msg))
        seq = len(names)
        seen = set()
        for ifindex in indexes:  # one dump at a time: a netlink socket runs one dump
            seq += 1
            r = conn.exchange([getaddr_request(ifindex, seq)], [seq])[seq]
            if isinstance(r, int):
                if r == ENODEV:  # removed between the two requests
                    continue
                raise OSError(r, f"RTM_GETADDR ifindex {ifindex}: error {r}")
            for msg in r:
                if _HDR.unpack_from(msg)[1] != RTM_NEWADDR:
                    continue
                fa = address_of(msg, ifindex)
                if fa is not None and fa not in seen:
                    seen.add(fa)
                    out[fa[0]].append(fa[1])
    finally:
        conn.s.close()
    return out
