"""nf_tables over a plain ``AF_NETLINK`` socket, standard library only: constants, the
hand-encoded hot-path messages, reply decoding and the transport.

This is the part of the nftables backend that every request needs, so it imports
nothing but ``_socket``, ``struct``, ``select``, ``time``, ``errno`` and ``posix``
(the cold exec path pays for each import).  The rarely needed builders of tables,
chains, rules and sets use pyroute2's message classes and live in
:mod:`nlportmap.nft.netlink`, which re-exports everything here.

Constants come from the kernel UAPI headers ``linux/netlink.h``,
``linux/netfilter/nfnetlink.h`` and ``linux/netfilter/nf_tables.h``; nft userspace
datatype ids (set key types, stored but not interpreted by the kernel) from
nftables' ``include/datatype.h``.

Byte orders: packet fields (addresses, ports) are network order; register values
that come from ``meta``/``ct``/``fib`` are host order.  Families are NFPROTO
numbers: 2 (``ip``) and 10 (``ip6``).

Every op of a transaction carries ``NLM_F_ACK`` and its own sequence number, so
the kernel answers each op exactly once; if any op fails the whole batch is
rolled back (ops that were fine are still acked with 0), so *any* non-zero errno
means nothing was applied.  See ../shared/reference/netlink-notes.md §2.

An op is ``(message type, extra nlmsg flags, message)`` where the message is a
:class:`RawMsg` or any object with ``family``, ``names`` and
``encode_op(mtype, flags, seq) -> bytes`` (the pyroute2-built ones).
"""
from __future__ import annotations

import errno as _errno
import select
import struct
import time

import _socket
import posix

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterator, Sequence
    from typing import Protocol, TypeAlias

    class BuiltMsg(Protocol):
        """A message built by pyroute2's classes (nft/netlink.py's ``Pr2Msg``)."""

        family: int
        names: tuple[str, ...]

        def encode_op(self, mtype: int, flags: int, seq: int) -> bytes: ...

    #: (msg_type, nlm_flags, message): one op of a transaction
    Op: TypeAlias = "tuple[int, int, RawMsg | BuiltMsg]"
    #: a set element's key: bytes, or (start, inclusive end) in an interval set
    Key: TypeAlias = bytes | tuple[bytes, bytes]
    #: (key, data or None, comment or None) of one set element
    ElemItem: TypeAlias = tuple[Key, bytes | None, str | None]
    #: per request sequence number: its raw reply messages, or an errno
    Replies: TypeAlias = dict[int, list[bytes] | int]

NFNL_SUBSYS_NFTABLES = 10         # linux/netfilter/nfnetlink.h

# ------------------------------------------------------------------ constants
NETLINK_NETFILTER = 12            # linux/netlink.h
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11

NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
FAMILY = {4: NFPROTO_IPV4, 6: NFPROTO_IPV6}

# nf_tables message types (enum nf_tables_msg_types)
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET, DELSET = 9, 10, 11
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14
GETGEN = 16

ADD = NLM_F_CREATE | NLM_F_APPEND       # "add": idempotent for tables/chains/sets
CREATE = NLM_F_CREATE | NLM_F_EXCL      # "create": EEXIST if present

# registers (enum nft_registers)
REG_VERDICT, REG_1 = 0, 1


def reg32(n: int) -> int:
    """NFT_REG32_00 + n (4-byte register n)."""
    return 8 + n


# enum nft_table_attributes; table flags (enum nft_table_flags)
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_USERDATA = 1, 2, 6
NFT_TABLE_F_DORMANT, NFT_TABLE_F_OWNER = 0x1, 0x2

NFT_JUMP, NFT_GOTO, NFT_RETURN, NF_DROP, NF_ACCEPT = -3, -4, -5, 0, 1
HOOK = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
NFT_DATA_VERDICT = 0xFFFFFF00           # verdict-map data type (kernel, not nft's id 1)
NFT_SET_MAP_FLAGS = {"NFT_SET_MAP"}

# nft userspace datatype ids (include/datatype.h)
T_IPV4, T_IPV6, T_PROTO, T_SERVICE = 7, 8, 12, 13
META_IIFNAME, META_OIFNAME, META_NFPROTO, META_L4PROTO = 6, 7, 15, 16
CT_STATUS = 2
IPS_DST_NAT = 1 << 5                    # linux/netfilter/nf_conntrack_common.h
RTN_LOCAL = 2
CMP_EQ, CMP_NEQ = 0, 1
L4PROTO = {"tcp": 6, "udp": 17, "sctp": 132}


def concat_type(*ids: int) -> int:
    """nft concatenated datatype id: ``(a << 6 | b) << 6 | c`` (include/datatype.h)."""
    v = 0
    for i in ids:
        v = (v << 6) | i
    return v


def pad4(b: bytes) -> bytes:
    """Concatenation fields are 4-byte (register) aligned."""
    return b + b"\0" * (-len(b) % 4)


def ip_bytes(addr: str) -> bytes:
    """Packed address (4 or 16 bytes, network order)."""
    return _socket.inet_pton(_socket.AF_INET6 if ":" in addr else _socket.AF_INET, addr)



class RawMsg:
    """An nf_tables message body we encode ourselves (nfgenmsg + attributes, no header).

    The hot path (set elements, element gets, rule dumps) uses these: pyroute2's
    generic NLA machinery spends ~0.2 ms per element message, most of an ADD in
    resident mode.  The bytes are identical to pyroute2's encoding
    (tests/unit/nft/test_fast_encoding.py compares them).  ``names`` label the
    message in errors.
    """

    __slots__ = ("body", "family", "names")

    def __init__(self, family: int, names: tuple[str, ...], attrs: bytes) -> None:
        self.family = family
        self.names = names
        self.body = struct.pack("!BBH", family, 0, 0) + attrs


def nla(atype: int, payload: bytes) -> bytes:
    """One netlink attribute: u16 length (unpadded), u16 type, payload padded to 4."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _nlstr(atype: int, text: str) -> bytes:
    return nla(atype, text.encode() + b"\0")


# NFTA_SET_ELEM_LIST_{TABLE,SET,ELEMENTS} = 1, 2, 3; NFTA_SET_ELEM_{KEY,DATA,USERDATA,KEY_END}
# = 1, 2, 6, 10 (enum nft_set_elem_attributes: _PAD 8, _OBJREF 9 come before); NFTA_DATA_VALUE
# = 1; nftnl udata TLV: u8 type (0 = comment), u8 length, value (NUL-terminated).  The
# elements of a list are numbered 1, 2, 3... as libnftnl and pyroute2 do (the kernel
# iterates the nest and ignores the numbers).  A key ``(start, end)`` is a range of an
# interval set (concatenations: pipapo, Linux >= 5.6), ``end`` inclusive.
NFTA_SET_ELEM_KEY_END = 10


def _elem(key: Key, data: bytes | None, comment: str | None, index: int = 1) -> bytes:
    if isinstance(key, tuple):
        body = nla(1, nla(1, key[0])) + nla(NFTA_SET_ELEM_KEY_END, nla(1, key[1]))
    else:
        body = nla(1, nla(1, key))
    if data is not None:
        body += nla(2, nla(1, data))
    if comment:
        c = comment.encode() + b"\0"
        body += nla(6, bytes((0, len(c))) + c)
    return nla(index, body)


def elem_list(family: int, tbl: str, set_name: str, elems: bytes) -> RawMsg:
    return RawMsg(family, (tbl, set_name), _nlstr(1, tbl) + _nlstr(2, set_name) + nla(3, elems))


def set_elems(add: bool, family: int, tbl: str, set_name: str, items: Sequence[ElemItem]) -> Op:
    """NEW/DELSETELEM for ``items`` = [(key bytes, data bytes | None, comment | None)].

    Keep one message under 64 KiB (an NLA length is u16): callers split large lists.
    """
    els = b"".join(_elem(k, d if add else None, c if add else None, i)
                   for i, (k, d, c) in enumerate(items, 1))
    return (NEWSETELEM if add else DELSETELEM), (NLM_F_CREATE if add else 0), elem_list(family, tbl, set_name, els)


if not TYPE_CHECKING:
    Op = tuple  # (msg_type, nlm_flags, RawMsg | pyroute2-built message)

_MSG_NAMES = {NEWTABLE: "NEWTABLE", GETTABLE: "GETTABLE", DELTABLE: "DELTABLE", NEWCHAIN: "NEWCHAIN",
              GETCHAIN: "GETCHAIN", DELCHAIN: "DELCHAIN", NEWRULE: "NEWRULE", GETRULE: "GETRULE",
              DELRULE: "DELRULE", NEWSET: "NEWSET", GETSET: "GETSET", DELSET: "DELSET",
              NEWSETELEM: "NEWSETELEM", GETSETELEM: "GETSETELEM", DELSETELEM: "DELSETELEM"}


def flush_set(family: int, tbl: str, set_name: str) -> Op:
    """DELSETELEM without NFTA_SET_ELEM_LIST_ELEMENTS: removes every element (``nft flush set``)."""
    return DELSETELEM, 0, RawMsg(family, (tbl, set_name), _nlstr(1, tbl) + _nlstr(2, set_name))


def new_table(family: int, tbl: str, comment: str | None = None, flags: int = 0) -> Op:
    """NEWTABLE (``add``: creates the table, or updates an existing one) with explicit
    NFTA_TABLE_FLAGS: on an existing table ``flags 0`` clears ``dormant`` (in the caller's
    batch, so atomically with it); the comment is nftnl udata (type 0), as ``nft`` writes it."""
    a = _nlstr(NFTA_TABLE_NAME, tbl) + nla(NFTA_TABLE_FLAGS, struct.pack("!I", flags))
    if comment:
        c = comment.encode() + b"\0"
        a += nla(NFTA_TABLE_USERDATA, bytes((0, len(c))) + c)
    return NEWTABLE, NLM_F_CREATE | NLM_F_APPEND, RawMsg(family, (tbl,), a)


def op_name(op: Op) -> str:
    """Human name of an op for error messages, e.g. ``NEWSETELEM ip nlportmap/hostports``."""
    mtype, _, msg = op
    fam = {2: "ip", 10: "ip6"}.get(msg.family, str(msg.family))
    return f"{_MSG_NAMES.get(mtype, mtype)} {fam} {'/'.join(msg.names)}"


def encode(op: Op, seq: int) -> bytes:
    """The op as one netlink message with ``NLM_F_REQUEST|NLM_F_ACK`` and sequence ``seq``."""
    mtype, flags, msg = op
    if isinstance(msg, RawMsg):
        return _header(len(msg.body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq) + msg.body
    return bytes(msg.encode_op(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq))


def _header(body_len: int, mtype: int, flags: int, seq: int) -> bytes:
    return struct.pack("=IHHII", 16 + body_len, (NFNL_SUBSYS_NFTABLES << 8) | mtype, flags, seq, 0)


def _marker(mtype: int, seq: int, genid: int | None = None) -> bytes:
    """BATCH_BEGIN/END: nfgenmsg with res_id = NFNL_SUBSYS_NFTABLES; BEGIN may carry
    NFNL_BATCH_GENID (attr 1, be32) so the kernel refuses a stale batch with ERESTART."""
    body = struct.pack("!BBH", 0, 0, NFNL_SUBSYS_NFTABLES)
    if genid is not None:
        body += struct.pack("=HH", 8, 1) + struct.pack("!I", genid)
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST, seq, 0) + body


# ------------------------------------------------------------------ decoding
def attrs(buf: bytes, off: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Walk netlink attributes in ``buf[off:end]`` -> {type (without flags): payload}."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            break
        out[ty & 0x3FFF] = buf[off + 4: off + ln]
        off += (ln + 3) & ~3
    return out


def attr_list(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            break
        out.append((ty & 0x3FFF, buf[off + 4: off + ln]))
        off += (ln + 3) & ~3
    return out


def udata_comment(b: bytes | None) -> str | None:
    """nftnl udata TLV list (u8 type, u8 len, value) -> the comment (type 0)."""
    if not b:
        return None
    off = 0
    while off + 2 <= len(b):
        t, ln = b[off], b[off + 1]
        if t == 0:
            return b[off + 2: off + 2 + ln].rstrip(b"\0").decode(errors="replace")
        off += 2 + ln
    return None


class Elem:
    """A set/map element as read back: raw key/data bytes and the comment; ``key_end``:
    the inclusive end of a range (interval sets), else None."""

    __slots__ = ("comment", "data", "key", "key_end")

    def __init__(self, key: bytes, data: bytes | None, comment: str | None, key_end: bytes | None = None) -> None:
        self.key = key
        self.data = data
        self.comment = comment
        self.key_end = key_end

    @property
    def full_key(self) -> Key:
        """The key to delete this element by: ``key``, or ``(key, key_end)`` for a range."""
        return self.key if self.key_end is None else (self.key, self.key_end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Elem) and (self.key, self.data, self.comment, self.key_end) == (
            other.key, other.data, other.comment, other.key_end)

    def __hash__(self) -> int:
        return hash((self.key, self.data, self.comment, self.key_end))

    def __repr__(self) -> str:
        end = "" if self.key_end is None else f", key_end={self.key_end!r}"
        return f"Elem(key={self.key!r}, data={self.data!r}, comment={self.comment!r}{end})"


def parse_elems(msg: bytes) -> list[Elem]:
    """Elements of one NEWSETELEM message (NFTA_SET_ELEM_LIST_ELEMENTS=3, NFTA_LIST_ELEM=1)."""
    top = attrs(msg, 20)
    out = []
    for ty, el in attr_list(top.get(3, b"")):
        if ty != 1:
            continue
        a = attrs(el)
        key = attrs(a[1]).get(1, b"") if 1 in a else b""
        data = attrs(a[2]).get(1) if 2 in a else None
        end = attrs(a[NFTA_SET_ELEM_KEY_END]).get(1) if NFTA_SET_ELEM_KEY_END in a else None
        out.append(Elem(key, data, udata_comment(a.get(6)), end))
    return out


class TableInfo:
    """A table as read back (GETTABLE): its flags and its comment (udata or raw userdata)."""

    __slots__ = ("comment", "flags")

    def __init__(self, flags: int, comment: str | None) -> None:
        self.flags = flags
        self.comment = comment

    @property
    def dormant(self) -> bool:
        return bool(self.flags & NFT_TABLE_F_DORMANT)

    @staticmethod
    def parse(raw: bytes) -> TableInfo:
        a = attrs(raw, 20)
        flags = struct.unpack("!I", a[NFTA_TABLE_FLAGS][:4])[0] if NFTA_TABLE_FLAGS in a else 0
        ud = a.get(NFTA_TABLE_USERDATA)
        comment = udata_comment(ud)
        if comment is None and ud:  # userdata that is not a TLV list: show it raw
            comment = ud.rstrip(b"\0").decode(errors="replace")
        return TableInfo(flags, comment)


def table_get(family: int, tbl: str, seq: int) -> bytes:
    """A GETTABLE request (one table, not a dump)."""
    body = struct.pack("!BBH", family, 0, 0) + _nlstr(NFTA_TABLE_NAME, tbl)
    return _header(len(body), GETTABLE, NLM_F_REQUEST, seq) + body


class RuleInfo:
    """A rule as read back: its handle and comment."""

    __slots__ = ("comment", "handle")

    def __init__(self, handle: int, comment: str | None) -> None:
        self.handle = handle
        self.comment = comment


# How sockets are closed: directly by default; the daemon installs a closer that hands them
# to a background thread (set_closer), because releasing a NETLINK_NETFILTER socket can wait
# for nf_tables' RCU-deferred cleanup and no request should wait for it.
_closer: Callable[[_socket.socket], None] | None = None


def set_closer(fn: Callable[[_socket.socket], None] | None) -> None:
    """Install ``fn`` to close netlink sockets (None: close them directly)."""
    global _closer
    _closer = fn


def release(sock: _socket.socket) -> None:
    """Close ``sock`` through the installed closer (see :func:`set_closer`)."""
    if _closer is None:
        sock.close()
    else:
        _closer(sock)


class NftError(OSError):
    """A transaction was refused.  ``errors`` = [(op index or -1 for the batch, errno, attr offset)]."""

    def __init__(self, errors: list[tuple[int, int, int | None]], names: list[str]) -> None:
        self.errors = errors
        i, e, off = errors[0]
        what = "batch" if i < 0 else f"op {i} ({names[i]})"
        super().__init__(e, f"{what}: {posix.strerror(e)}" + ("" if off is None else f" (attr offset {off})"))


class NetfilterTransport:
    """A blocking ``NETLINK_NETFILTER`` socket with per-request deadlines: the receive
    loop, batches (:meth:`commit`) and request/reply matching (:meth:`request`).
    The typed reads are :class:`NetfilterSocket`'s.

    One request in flight at a time (replies are matched by sequence number).
    Create it in the network namespace to program: a socket's netns is fixed at
    creation.  ``timeout`` is seconds per request.
    """

    def __init__(self, timeout: float = 5.0, sndbuf: int = 4 << 20) -> None:
        s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        for opt in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
            try:
                s.setsockopt(_socket.SOL_SOCKET, opt, sndbuf)
            except OSError:
                pass
        s.bind((0, 0))
        s.setblocking(False)
        self.sock = s
        self.timeout = timeout
        self._seq = int.from_bytes(posix.urandom(3), "little") << 4

    def close(self) -> None:
        release(self.sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self, n: int = 1) -> int:
        s = self._seq + 1
        self._seq += n
        return s

    # -- receive loop -------------------------------------------------------
    def _recv(self, deadline: float) -> bytes:
        while True:
            try:
                return self.sock.recv(1 << 20)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("netlink: no answer from the kernel in time") from None
                select.select([self.sock], [], [], left)

    def messages(self, deadline: float) -> Iterator[tuple[int, int, int, bytes]]:
        """Yield (type, flags, seq, raw message) until the caller stops."""
        while True:
            buf = self._recv(deadline)
            off = 0
            while off + 16 <= len(buf):
                ln, typ, flg, sq, _ = struct.unpack_from("=IHHII", buf, off)
                if ln < 16:
                    break
                yield typ, flg, sq, buf[off: off + ln]
                off += (ln + 3) & ~3

    # -- requests -----------------------------------------------------------
    def genid(self) -> int:
        """NFT_MSG_GETGEN -> the netns ruleset generation (NFTA_GEN_ID, be32)."""
        seq = self.next_seq()
        body = struct.pack("!BBH", 0, 0, 0)
        self.sock.send(struct.pack("=IHHII", 20, (NFNL_SUBSYS_NFTABLES << 8) | GETGEN,
                                   NLM_F_REQUEST, seq, 0) + body)
        for typ, _, sq, raw in self.messages(time.monotonic() + self.timeout):
            if sq != seq:
                continue
            if typ == NLMSG_ERROR:
                code = -struct.unpack_from("=i", raw, 16)[0]
                raise OSError(code, posix.strerror(code))
            gen: int = struct.unpack("!I", attrs(raw, 20)[1])[0]
            return gen
        raise AssertionError("unreachable: messages() ends only by raising")

    def commit(self, ops: list[Op], genid: int | None = None) -> None:
        """Send ``ops`` as one atomic transaction; raise :class:`NftError` on refusal.

        One write: nf_tables takes a transaction only whole, from BATCH_BEGIN to BATCH_END
        in one message buffer (a batch split over writes is aborted), and processes it
        inside that write, then queues one acknowledgement per op.  So its size is bounded
        by the send buffer (``sndbuf``, 4 MiB asked) and the acknowledgements by the
        receive buffer: callers keep batches to element messages of at most 200 elements
        (~50 per 1,000 mappings), and the mapping limit (``netconf.MAX_PORT_MAPPINGS``)
        keeps one request's batch to tens of messages and well under a MiB.

        With ``genid`` the kernel refuses the batch (ERESTART, op index -1) if
        the ruleset changed since that generation.
        """
        if not ops:
            return
        seq0 = self.next_seq(len(ops) + 2)
        parts = [_marker(NFNL_MSG_BATCH_BEGIN, seq0, genid)]
        for i, op in enumerate(ops):
            parts.append(encode(op, seq0 + 1 + i))
        parts.append(_marker(NFNL_MSG_BATCH_END, seq0 + len(ops) + 1))
        self.sock.send(b"".join(parts))
        want = set(range(seq0 + 1, seq0 + 1 + len(ops)))
        errs: list[tuple[int, int, int | None]] = []
        for typ, _, sq, raw in self.messages(time.monotonic() + self.timeout):
            if typ == NLMSG_ERROR and seq0 <= sq <= seq0 + len(ops):
                code = -struct.unpack_from("=i", raw, 16)[0]
                bad = None
                ea = attrs(raw, 36)  # ext-ack TLVs after the capped header
                if 2 in ea:          # NLMSGERR_ATTR_OFFS
                    bad = struct.unpack("=I", ea[2][:4])[0]
                want.discard(sq)
                if code:
                    errs.append((sq - seq0 - 1, code, bad))
                if sq == seq0:
                    want.clear()
            if not want:
                break
        if errs:
            errs.sort()
            raise NftError(errs, [op_name(o) for o in ops])

    #: Most requests in flight in :meth:`request`.  Every reply is its own skb of ~4-8 KiB
    #: truesize in our receive buffer; thousands sent in one write overran it (ENOBUFS,
    #: issue 12.7).  256 replies stay far below the buffer we ask for (4 MiB).
    WINDOW = 256

    def request(self, reqs: list[bytes], seqs: list[int]) -> Replies:
        """Send already-encoded non-batch requests; collect replies by seq.

        At most :data:`WINDOW` requests are in flight: one write per window, whose
        replies are read before the next window goes out (one write in the usual case).
        ``seqs[i]`` is the sequence number of ``reqs[i]``.
        Returns {seq: [raw messages]} where an error reply is stored as an int errno.
        A dump ends at NLMSG_DONE; a plain get ends with its one reply.
        """
        got: dict[int, list[bytes]] = {s: [] for s in seqs}
        out: Replies = dict(got)  # the same lists: an error reply replaces its seq's list
        for i in range(0, len(reqs), self.WINDOW):
            wreqs, wseqs = reqs[i:i + self.WINDOW], seqs[i:i + self.WINDOW]
            self.sock.send(b"".join(wreqs))
            pending = set(wseqs)
            for typ, flg, sq, raw in self.messages(time.monotonic() + self.timeout):
                if sq not in pending:
                    continue
                if typ == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", raw, 16)[0]
                    if code:
                        out[sq] = code
                    pending.discard(sq)
                elif typ == NLMSG_DONE:
                    pending.discard(sq)
                else:
                    got[sq].append(raw)
                    if not flg & NLM_F_MULTI:
                        pending.discard(sq)
                if not pending:
                    break
        return out


class NetfilterSocket(NetfilterTransport):
    """:class:`NetfilterTransport` with the typed reads the backends use: elements by key
    and by dump, tables, chains and rules (one round trip each, whatever the count)."""

    def __enter__(self) -> NetfilterSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_elems(self, queries: list[tuple[int, str, str, Key]]) -> list[Elem | None]:
        """Look up single elements: queries = [(family, table, set, key)].

        Returns, per query, an :class:`Elem` or None (absent, or table/set
        missing).  All lookups go out in one write: O(len(queries)), never a dump.
        In an interval set the key is a point (a range key asks for its start): the
        answer is the element whose range holds it, with its own key and ``key_end``.
        """
        reqs: list[bytes] = []
        seqs: list[int] = []
        for family, tbl, set_name, key in queries:
            seq = self.next_seq()
            point = key[0] if isinstance(key, tuple) else key
            body = elem_list(family, tbl, set_name, _elem(point, None, None)).body
            reqs.append(_header(len(body), GETSETELEM, NLM_F_REQUEST, seq) + body)
            seqs.append(seq)
        if not reqs:
            return []
        res = self.request(reqs, seqs)
        out: list[Elem | None] = []
        for seq in seqs:
            r = res[seq]
            if isinstance(r, int):
                if r not in (_errno.ENOENT,):
                    raise OSError(r, f"get set element: {posix.strerror(r)}")
                out.append(None)
            else:
                els = [e for raw in r for e in parse_elems(raw)]
                out.append(els[0] if els else None)
        return out

    def dump_rules(self, family: int, tbl: str, chn: str) -> list[RuleInfo] | None:
        """Handles and comments of one chain's rules (None if table/chain missing)."""
        seq = self.next_seq()
        body = struct.pack("!BBH", family, 0, 0) + _nlstr(1, tbl) + _nlstr(2, chn)  # NFTA_RULE_TABLE, _CHAIN
        r = self.request([_header(len(body), GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq) + body], [seq])[seq]
        if isinstance(r, int):
            if r != _errno.ENOENT:
                raise OSError(r, posix.strerror(r))
            return None
        out = []
        for m in r:
            a = attrs(m, 20)
            out.append(RuleInfo(struct.unpack("!Q", a[3])[0] if 3 in a else 0, udata_comment(a.get(7))))
        return out

    def table_inventory(self, family: int, tbl: str, sets: bool = True
                        ) -> tuple[dict[str, list[str | None]], set[str] | None, TableInfo] | None:
        """(``{chain: [rule comments]}``, ``{set names}`` or None without ``sets``,
        :class:`TableInfo`) of a table, or None if the table is missing.  One GETTABLE and a
        dump of its rules in one write (and one dump of its sets: a netlink socket runs one
        dump at a time), never of elements: O(1) in the number of mappings."""
        out: list[list[bytes]] = []
        info: TableInfo | None = None
        for mtype in ((GETRULE, GETSET) if sets else (GETRULE,)):
            reqs: list[bytes] = []
            seqs: list[int] = []
            if info is None:
                seqs.append(self.next_seq())
                reqs.append(table_get(family, tbl, seqs[-1]))
            seq = self.next_seq()
            body = struct.pack("!BBH", family, 0, 0) + _nlstr(1, tbl)  # NFTA_RULE_TABLE / NFTA_SET_TABLE
            reqs.append(_header(len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq) + body)
            res = self.request(reqs, [*seqs, seq])
            if info is None:
                t = res[seqs[0]]
                if isinstance(t, int):
                    if t == _errno.ENOENT:
                        return None
                    raise OSError(t, posix.strerror(t))
                info = TableInfo.parse(t[0])
            r = res[seq]
            if isinstance(r, int):
                if r == _errno.ENOENT:
                    return None
                raise OSError(r, posix.strerror(r))
            out.append(r)
        chains: dict[str, list[str | None]] = {}
        for m in out[0]:
            a = attrs(m, 20)
            chains.setdefault(a.get(2, b"").rstrip(b"\0").decode(), []).append(udata_comment(a.get(7)))
        names = {attrs(m, 20).get(2, b"").rstrip(b"\0").decode() for m in out[1]} if sets else None
        if info is None:  # pragma: no cover - the first round trip sets it or returns
            return None
        return chains, names, info

    def tables(self, queries: list[tuple[int, str]]) -> list[TableInfo | None]:
        """Per (family, table): its :class:`TableInfo`, or None if missing.  Single GETTABLE
        lookups, all in one write."""
        seqs = [self.next_seq() for _ in queries]
        res = self.request([table_get(f, t, s) for (f, t), s in zip(queries, seqs, strict=True)], seqs)
        out: list[TableInfo | None] = []
        for seq in seqs:
            r = res[seq]
            if isinstance(r, int):
                if r != _errno.ENOENT:
                    raise OSError(r, f"get table: {posix.strerror(r)}")
                out.append(None)
            else:
                out.append(TableInfo.parse(r[0]))
        return out

    def dump_elems(self, family: int, tbl: str, set_name: str) -> list[Elem] | None:
        """All elements of a set (None if the table/set does not exist). O(n): off the hot path."""
        seq = self.next_seq()
        body = struct.pack("!BBH", family, 0, 0) + _nlstr(1, tbl) + _nlstr(2, set_name)
        r = self.request([_header(len(body), GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq) + body], [seq])[seq]
        if isinstance(r, int):
            if r == _errno.ENOENT:
                return None
            raise OSError(r, posix.strerror(r))
        return [e for m in r for e in parse_elems(m)]

    def chains_exist(self, queries: list[tuple[int, str, str]]) -> list[bool]:
        """Per (family, table, chain): does it exist?  Single GETCHAIN lookups by name, all in
        one write (never a dump of the table: iptables-nft's ``nat`` holds kube-proxy's
        thousands of chains).  A missing table or chain is False."""
        reqs: list[bytes] = []
        seqs: list[int] = []
        for family, tbl, chn in queries:
            seq = self.next_seq()
            body = struct.pack("!BBH", family, 0, 0) + _nlstr(1, tbl) + _nlstr(3, chn)  # CHAIN_TABLE, _NAME
            reqs.append(_header(len(body), GETCHAIN, NLM_F_REQUEST, seq) + body)
            seqs.append(seq)
        if not reqs:
            return []
        res = self.request(reqs, seqs)
        out = []
        for seq in seqs:
            r = res[seq]
            if isinstance(r, int) and r != _errno.ENOENT:
                raise OSError(r, f"get chain: {posix.strerror(r)}")
            out.append(not isinstance(r, int) and bool(r))
        return out

    def dump_chains(self, family: int, tbl: str) -> list[str] | None:
        """Names of the chains of one table (None if the table is missing)."""
        seq = self.next_seq()
        body = struct.pack("!BBH", family, 0, 0) + _nlstr(1, tbl)  # NFTA_CHAIN_TABLE
        r = self.request([_header(len(body), GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP, seq) + body], [seq])[seq]
        if isinstance(r, int):
            if r == _errno.ENOENT:
                return None
            raise OSError(r, posix.strerror(r))
        out = []
        for m in r:
            a = attrs(m, 20)
            if a.get(1, b"").rstrip(b"\0").decode() == tbl and 3 in a:
                out.append(a[3].rstrip(b"\0").decode())
        return out
