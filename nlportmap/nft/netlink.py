"""nf_tables message builders for the skeleton (tables, chains, rules, sets), on
pyroute2's message classes; re-exports :mod:`nlportmap.nft.wire` (constants, the
hand-encoded hot-path messages, decoding and the transport), so ``netlink.X``
works for both.

Encoding of these rare messages uses pyroute2's message classes
(``pyroute2.netlink.nfnetlink.nftsocket``, loaded through
:mod:`nlportmap._pyroute2`); importing this module costs pyroute2's import, so
the per-request path imports it only when a skeleton must be (re)written.  Constants come from the kernel UAPI
headers ``linux/netlink.h``, ``linux/netfilter/nfnetlink.h`` and
``linux/netfilter/nf_tables.h``; nft userspace datatype ids (used as set key
types, which the kernel stores but does not interpret) from nftables'
``include/datatype.h``.

Byte orders: packet fields (addresses, ports) are network order; register
values that come from ``meta``/``ct``/``fib`` are host order.
Families are NFPROTO numbers: 2 (``ip``) and 10 (``ip6``).

Every op of a transaction carries ``NLM_F_ACK`` and its own sequence number,
so the kernel answers each op exactly once; if any op fails the whole batch is
rolled back (and ops that were fine are still acked with 0), so *any* non-zero
errno means nothing was applied.  See ../shared/reference/netlink-notes.md §2.
"""
from __future__ import annotations

import struct
from typing import Any, TypeAlias

from .. import _pyroute2
from .wire import *  # noqa: F403 - re-export: one namespace for builders and wire
from .wire import _elem, _header, _marker, _nlstr  # noqa: F401 - used by tests and callers
from .wire import RawMsg, nla
from .wire import (ADD, CMP_EQ, CMP_NEQ, CT_STATUS, DELRULE, DELTABLE, HOOK, IPS_DST_NAT, META_IIFNAME,
                   META_NFPROTO, META_OIFNAME, NEWCHAIN, NEWRULE, NEWSET, NEWTABLE, NFNL_SUBSYS_NFTABLES,
                   NFT_DATA_VERDICT, NFT_SET_MAP_FLAGS, REG_1, REG_VERDICT, RTN_LOCAL, Op)

_pyroute2.load()

from pyroute2.netlink.nfnetlink import nftsocket as nfts  # noqa: E402

#: one attribute in pyroute2's notation: (NLA name, value: int, str, bytes, set or a Nest)
Attr: TypeAlias = tuple[str, object]
#: a nested attribute set in pyroute2's notation: ``{"attrs": [Attr, ...]}``; also an expression
Nest: TypeAlias = dict[str, list[Attr]]

# ---------------------------------------------------------------- expressions
def _e(name: str, attrs: list[Attr]) -> Nest:
    p = f"NFTA_{name.upper()}_"
    return {"attrs": [("NFTA_EXPR_NAME", name),
                      ("NFTA_EXPR_DATA", {"attrs": [(p + k.upper(), v) for k, v in attrs]})]}


def _d(b: bytes) -> Nest:
    return {"attrs": [("NFTA_DATA_VALUE", b)]}


def payload(base: int, off: int, ln: int, dreg: int = REG_1) -> Nest:
    """Load ``ln`` bytes at ``off`` of header ``base`` (0 link, 1 network, 2 transport)."""
    return _e("payload", [("dreg", dreg), ("base", base), ("offset", off), ("len", ln)])


def cmp(b: bytes, op: int = CMP_EQ, sreg: int = REG_1) -> Nest:
    return _e("cmp", [("sreg", sreg), ("op", op), ("data", _d(b))])


def meta(key: int, dreg: int = REG_1) -> Nest:
    return _e("meta", [("dreg", dreg), ("key", key)])


def ct(key: int, dreg: int = REG_1) -> Nest:
    return _e("ct", [("dreg", dreg), ("key", key)])


def bitwise(mask: bytes, xor: bytes, reg: int = REG_1) -> Nest:
    return _e("bitwise", [("sreg", reg), ("dreg", reg), ("len", len(mask)),
                          ("mask", _d(mask)), ("xor", _d(xor))])


def verdict(code: int, chain: str | None = None) -> Nest:
    v: list[Attr] = [("NFTA_VERDICT_CODE", code)]
    if chain:
        v.append(("NFTA_VERDICT_CHAIN", chain))
    return _e("immediate", [("dreg", REG_VERDICT),
                            ("data", {"attrs": [("NFTA_DATA_VERDICT", {"attrs": v})]})])


def counter() -> Nest:
    return _e("counter", [])


def masq() -> Nest:
    return _e("masq", [])


def fib_daddr_local() -> list[Nest]:
    """``fib daddr type local``: NFT_FIB_RESULT_ADDRTYPE (3), NFTA_FIB_F_DADDR (2)."""
    return [_e("fib", [("dreg", REG_1), ("result", 3), ("flags", 2)]),
            cmp(struct.pack("=I", RTN_LOCAL))]


def ct_status_dnat() -> list[Nest]:
    """``ct status dnat``: status (host order u32) & IPS_DST_NAT != 0."""
    return [ct(CT_STATUS), bitwise(struct.pack("=I", IPS_DST_NAT), b"\0" * 4),
            cmp(b"\0" * 4, CMP_NEQ)]


def lookup(set_name: str, sreg: int = REG_1, dreg: int | None = None) -> Nest:
    a: list[Attr] = [("set", set_name), ("sreg", sreg)]
    if dreg is not None:
        a.append(("dreg", dreg))
    return _e("lookup", a)


def nat(ntype: int, family: int, reg_addr: int, reg_proto: int | None = None) -> Nest:
    """``nat`` expression; ntype 0 SNAT, 1 DNAT; family NFPROTO_*."""
    a: list[Attr] = [("type", ntype), ("family", family), ("reg_addr_min", reg_addr)]
    if reg_proto is not None:
        a.append(("reg_proto_min", reg_proto))
    return _e("nat", a)


def addr_match(family: int, which: str, network: str, negate: bool = False) -> list[Nest]:
    """``ip[6] saddr|daddr [!=] ADDR[/LEN]`` as payload [+ bitwise] + cmp."""
    import ipaddress
    net = ipaddress.ip_network(network, strict=False)
    alen = 4 if net.version == 4 else 16
    off = {(4, "saddr"): 12, (4, "daddr"): 16, (6, "saddr"): 8, (6, "daddr"): 24}[(net.version, which)]
    op = CMP_NEQ if negate else CMP_EQ
    plen = net.prefixlen
    if plen % 8 == 0:
        n = plen // 8
        if n == 0:  # /0 matches everything; '!= /0' matches nothing
            return [] if not negate else [meta(META_NFPROTO), cmp(b"\xff")]
        return [payload(1, off, n), cmp(net.network_address.packed[:n], op)]
    return [payload(1, off, alen), bitwise(net.netmask.packed, b"\0" * alen),
            cmp(net.network_address.packed, op)]


def ifname_match(which: str, name: str, negate: bool = False) -> list[Nest]:
    """``iifname|oifname [!=] NAME`` (trailing ``*`` = prefix match), as nft encodes it."""
    key = META_IIFNAME if which == "iifname" else META_OIFNAME
    op = CMP_NEQ if negate else CMP_EQ
    data = name[:-1].encode() if name.endswith("*") else name.encode() + b"\0"
    if not data:
        return [] if not negate else [meta(META_NFPROTO), cmp(b"\xff")]
    return [meta(key), cmp(data, op)]


# ------------------------------------------------------------------- messages
class Pr2Msg:
    """A pyroute2-built nf_tables message in an op (see :mod:`nlportmap.nft.wire`)."""

    __slots__ = ("family", "msg", "names")

    def __init__(self, msg: Any, family: int, names: tuple[str, ...]) -> None:
        self.msg = msg  # pyroute2 nfgen_msg (untyped): stays inside this module
        self.family = family
        self.names = names

    def __getitem__(self, key: str) -> object:
        value: object = self.msg[key]
        return value

    def encode_op(self, mtype: int, flags: int, seq: int) -> bytes:
        m = self.msg
        m["header"].update(type=(NFNL_SUBSYS_NFTABLES << 8) | mtype, flags=flags, sequence_number=seq, pid=0)
        m.encode()
        data: bytes = bytes(m.data)
        return data


_NAME_ATTRS = ("_TABLE", "_NAME", "_CHAIN", "_LIST_SET", "LIST_TABLE")


def _m(cls: Any, family: int, attrs: list[Attr]) -> Pr2Msg:
    m = cls()
    m["nfgen_family"] = family
    m["attrs"] = [list(a) for a in attrs]
    names = tuple(v for k, v in attrs if k.endswith(_NAME_ATTRS) and isinstance(v, str))
    return Pr2Msg(m, family, names)


def table(family: int, name: str, comment: str | None = None, flags: int = ADD) -> Op:
    a: list[Attr] = [("NFTA_TABLE_NAME", name)]
    if comment:
        a.append(("NFTA_TABLE_USERDATA", comment))
    return NEWTABLE, flags, _m(nfts.nft_table_msg, family, a)


def del_table(family: int, name: str) -> Op:
    return DELTABLE, 0, _m(nfts.nft_table_msg, family, [("NFTA_TABLE_NAME", name)])


def chain(family: int, tbl: str, name: str, hook: str | None = None, prio: int = 0,
          ctype: str = "nat", comment: str | None = None, flags: int = ADD) -> Op:
    a: list[Attr] = [("NFTA_CHAIN_TABLE", tbl), ("NFTA_CHAIN_NAME", name)]
    if hook:
        a += [("NFTA_CHAIN_HOOK", {"attrs": [("NFTA_HOOK_HOOKNUM", HOOK[hook]),
                                             ("NFTA_HOOK_PRIORITY", prio)]}),
              ("NFTA_CHAIN_TYPE", ctype)]
    if comment:
        a.append(("NFTA_CHAIN_USERDATA", comment))
    return NEWCHAIN, flags, _m(nfts.nft_chain_msg, family, a)


def flush_chain(family: int, tbl: str, name: str) -> Op:
    """DELRULE without a handle flushes the chain."""
    return DELRULE, 0, _m(nfts.nft_rule_msg, family,
                          [("NFTA_RULE_TABLE", tbl), ("NFTA_RULE_CHAIN", name)])


def del_rule(family: int, tbl: str, chn: str, handle: int) -> Op:
    """DELRULE of one rule by handle (ENOENT if it is gone)."""
    return DELRULE, 0, _m(nfts.nft_rule_msg, family,
                          [("NFTA_RULE_TABLE", tbl), ("NFTA_RULE_CHAIN", chn), ("NFTA_RULE_HANDLE", handle)])


def rule(family: int, tbl: str, chn: str, exprs: list[Nest], comment: str | None = None,
         flags: int = ADD) -> Op:
    """NEWRULE appended to chain ``chn``; ``comment`` becomes nftnl udata (<= 250 bytes)."""
    a: list[Attr] = [("NFTA_RULE_TABLE", tbl), ("NFTA_RULE_CHAIN", chn),
                     ("NFTA_RULE_EXPRESSIONS", list(exprs))]
    if comment is not None:
        a.append(("NFTA_RULE_USERDATA", comment))
    return NEWRULE, flags, _m(nfts.nft_rule_msg, family, a)


def new_set(family: int, tbl: str, name: str, key_type: int, key_len: int,
            data_type: int | None = None, data_len: int | None = None,
            comment: str | None = None, set_id: int = 1) -> Op:
    """NEWSET: a hash set (``data_type`` None) or map; idempotent (CREATE|APPEND)."""
    a: list[Attr] = [("NFTA_SET_TABLE", tbl), ("NFTA_SET_NAME", name)]
    if data_type is not None:
        a.append(("NFTA_SET_FLAGS", set(NFT_SET_MAP_FLAGS)))
    else:
        a.append(("NFTA_SET_FLAGS", set()))
    a += [("NFTA_SET_KEY_TYPE", key_type), ("NFTA_SET_KEY_LEN", key_len)]
    if data_type is not None:
        a.append(("NFTA_SET_DATA_TYPE", data_type))
        if data_type != NFT_DATA_VERDICT:
            a.append(("NFTA_SET_DATA_LEN", data_len))
    a.append(("NFTA_SET_ID", set_id))
    if comment:
        a.append(("NFTA_SET_USERDATA", [("NFTNL_UDATA_SET_COMMENT", comment)]))
    return NEWSET, ADD, _m(nfts.nft_set_msg, family, a)


NFT_SET_INTERVAL, NFT_SET_CONCAT = 0x4, 0x80           # enum nft_set_flags
NFTA_SET_DESC, NFTA_SET_DESC_CONCAT = 9, 2              # enum nft_set_attributes / nft_set_desc_attributes
NFTA_LIST_ELEM, NFTA_SET_FIELD_LEN = 1, 1               # enum nft_list_attributes / nft_set_field_attributes
NFTA_SET_ID, NFTA_SET_USERDATA = 10, 13
NFTNL_UDATA_SET_COMMENT = 7                             # libnftnl enum nftnl_udata_set_types
_NESTED = 0x8000                                        # NLA_F_NESTED


def new_interval_set(family: int, tbl: str, name: str, key_type: int, field_lens: tuple[int, ...],
                     comment: str | None = None, set_id: int = 1) -> Op:
    """NEWSET of a concatenation with ranges (``flags interval``: the kernel picks pipapo,
    Linux >= 5.6), idempotent (CREATE|APPEND).  ``field_lens``: byte length of each field
    (NFTA_SET_DESC_CONCAT, as nft sends it).  Hand-encoded: pyroute2 0.9.7 nests
    NFTA_SET_DESC_CONCAT one level too deep."""
    be32 = struct.Struct("!I").pack
    fields = b"".join(nla(NFTA_LIST_ELEM | _NESTED, nla(NFTA_SET_FIELD_LEN, be32(n))) for n in field_lens)
    a = (_nlstr(1, tbl) + _nlstr(2, name) + nla(3, be32(NFT_SET_INTERVAL | NFT_SET_CONCAT))
         + nla(4, be32(key_type)) + nla(5, be32(sum(n + (-n % 4) for n in field_lens)))
         + nla(NFTA_SET_DESC | _NESTED, nla(NFTA_SET_DESC_CONCAT | _NESTED, fields))
         + nla(NFTA_SET_ID, be32(set_id)))
    if comment:
        c = comment.encode()[:250] + b"\0"
        a += nla(NFTA_SET_USERDATA, bytes((NFTNL_UDATA_SET_COMMENT, len(c))) + c)
    return NEWSET, ADD, RawMsg(family, (tbl, name), a)
