"""nlportmap's nftables layout: one table per family, maps keyed by host port.

::

    table ip nlportmap {                       # ip6: same, with ipv6_addr
      map hostports        { type inet_proto . inet_service : ipv4_addr . inet_service }
      map hostip_hostports { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
      set masq_pairs       { type ipv4_addr . ipv4_addr }   # saddr . daddr (127.0.0.1 -> pod)
      set masq_nets        { type ipv4_addr . ipv4_addr; flags interval }
                             # pod's subnet . pod (hairpin, other pods on its bridge); pipapo
      set masq_all         { type ipv4_addr }               # daddr (masqAll)
      set proxy_vips       { type ipv4_addr }               # addresses on a service proxy's dummy
                             # interface (ClusterIPs in IPVS mode); no owner, refreshed by each ADD
      map claims           { type ipv6_addr . inet_proto . inet_service . ipv6_addr : ipv6_addr . inet_service }
                             # shadowed claims: hostIP (:: = any; IPv4 as ::ffff:a.b.c.d) . proto . port
                             # . owner hash -> pod . port; promoted when the current owner is deleted
      map owned            { type ipv6_addr . inet_service : ipv6_addr . inet_proto . inet_service . ipv6_addr }
                             # per-owner manifest: owner hash . slot -> hostIP . proto . port . pod IP;
                             # lets DEL and re-ADD find everything an owner holds without a dump
      chain prerouting  { type nat hook prerouting priority -100; [conditions] fib daddr type local jump hostports }
      chain output      { type nat hook output priority -100;     [conditions] fib daddr type local jump hostports }
      chain hostports   { dnat ip to ip daddr . meta l4proto . th dport map @hostip_hostports
                          ip daddr @proxy_vips return
                          dnat ip to meta l4proto . th dport map @hostports }
      chain postrouting { type nat hook postrouting priority 100;
                          ct status dnat ip saddr . ip daddr @masq_pairs masquerade
                          ct status dnat ip saddr . ip daddr @masq_nets masquerade
                          ct status dnat ip daddr @masq_all masquerade }
      chain localnet_guard { type filter hook prerouting priority -300;   # ip only (CVE-2020-8558)
                          iifname != "lo" ip daddr 127.0.0.0/8 counter drop }
    }

Every element carries a comment = the owner (``containerID/ifname network``, the ifname
%-encoded: :class:`nlportmap.plan.Owner` is the one home of that format),
except those of ``proxy_vips``: node state, not an attachment's (not in :data:`SETS`,
so DEL, GC and ``list`` never look at it).
A first packet costs one hash lookup per map whatever the number of mappings;
ADD, DEL and CHECK touch only their own keys (single-element gets, never dumps).

Keys and data are concatenations with each field padded to 4 bytes (register
alignment): protocol number (u8), port (be16), addresses (network order).
"""
from __future__ import annotations

from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Sequence
    from hashlib import sha1 as _sha1  # typeshed has no stubs for _sha1

    from ..conditions import Match
    from .netlink import Nest
    from .wire import Key, Op, TableInfo
else:
    try:  # the C hash module directly: 'hashlib' costs ~1.7 ms of a cold start
        from _sha1 import sha1 as _sha1
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha1 as _sha1

TABLE = "nlportmap"
LAYOUT_VERSION = 4  # 3: proxy_vips set and its return rule in hostports; 4: masq_nets
TABLE_COMMENT = "nlportmap: CNI portmap hostPort forwarding (managed by nlportmap; see 'nlportmap list')"

HOSTPORTS = "hostports"
HOSTIP_HOSTPORTS = "hostip_hostports"
MASQ_PAIRS = "masq_pairs"
MASQ_ALL = "masq_all"
MASQ_NETS = "masq_nets"
CLAIMS = "claims"
OWNED = "owned"
PROXY_VIPS = "proxy_vips"
#: sets whose elements name their owner in their comment (DEL, GC and list scan these)
SETS = (HOSTPORTS, HOSTIP_HOSTPORTS, MASQ_PAIRS, MASQ_NETS, MASQ_ALL, CLAIMS, OWNED)
#: every set the skeleton creates (CHECK verifies they exist)
ALL_SETS = (*SETS, PROXY_VIPS)


def foreign_table(info: TableInfo | None) -> str | None:
    """Why a table named ``nlportmap`` (its :class:`~nlportmap.nft.wire.TableInfo`) is not
    ours, or None.  Ours carries :data:`TABLE_COMMENT` as its comment
    (every nlportmap release has set it) and is not owned by a process (``flags owner``)."""
    if info is None:
        return None
    if info.comment != TABLE_COMMENT:
        return "no comment" if info.comment is None else f"its comment is {info.comment[:80]!r}"
    if info.flags & N.NFT_TABLE_F_OWNER:
        return "it is owned by a process (flags owner)"
    return None


def alen(fam: int) -> int:
    return 4 if fam == 4 else 16


def _t(fam: int) -> int:
    return N.T_IPV4 if fam == 4 else N.T_IPV6


def _off(fam: int, which: str) -> int:
    return {(4, "saddr"): 12, (4, "daddr"): 16, (6, "saddr"): 8, (6, "daddr"): 24}[(fam, which)]


# ------------------------------------------------------------------ keys/data
def proto_port(proto: str, port: int) -> bytes:
    return N.pad4(bytes([N.L4PROTO[proto]])) + N.pad4(port.to_bytes(2, "big"))


def forward_key(fam: int, proto: str, host_ip: str | None, port: int) -> tuple[str, bytes]:
    """(set name, key bytes) for a forward's host side."""
    if host_ip is None:
        return HOSTPORTS, proto_port(proto, port)
    return HOSTIP_HOSTPORTS, N.ip_bytes(host_ip) + proto_port(proto, port)


def forward_data(container_ip: str, container_port: int) -> bytes:
    return N.ip_bytes(container_ip) + N.pad4(container_port.to_bytes(2, "big"))


def parse_forward_data(fam: int, data: bytes) -> tuple[str, int]:
    import _socket as socket
    n = alen(fam)
    ip = socket.inet_ntop(socket.AF_INET if fam == 4 else socket.AF_INET6, data[:n])
    return ip, int.from_bytes(data[n:n + 2], "big")


def parse_forward_key(fam: int, set_name: str, key: bytes) -> tuple[str, str | None, int]:
    """-> (proto, host_ip or None, host_port)."""
    import _socket as socket
    protos = {v: k for k, v in N.L4PROTO.items()}
    hip = None
    if set_name == HOSTIP_HOSTPORTS:
        n = alen(fam)
        hip = socket.inet_ntop(socket.AF_INET if fam == 4 else socket.AF_INET6, key[:n])
        key = key[n:]
    return protos.get(key[0], str(key[0])), hip, int.from_bytes(key[4:6], "big")


def masq_key(saddr: str | None, daddr: str) -> tuple[str, Key]:
    """(set, key) of a masquerade element: ``saddr`` None -> ``masq_all``; a prefix
    (``10.42.0.0/24``) -> the range ``first . daddr - last . daddr`` of ``masq_nets``;
    an address -> ``masq_pairs``."""
    d = N.ip_bytes(daddr)
    if saddr is None:
        return MASQ_ALL, d
    if "/" in saddr:
        net, plen = saddr.split("/")
        first = N.ip_bytes(net)
        host = (1 << (8 * len(first) - int(plen))) - 1
        last = (int.from_bytes(first, "big") | host).to_bytes(len(first), "big")
        return MASQ_NETS, (first + d, last + d)
    return MASQ_PAIRS, N.ip_bytes(saddr) + d


def masq_net_point(pod_ip: str) -> bytes:
    """A point of ``masq_nets`` inside the pod's own element (its subnet holds it): a
    single get of this point finds the element without knowing the prefix (DEL)."""
    d = N.ip_bytes(pod_ip)
    return d + d


def parse_masq_key(fam: int, set_name: str, key: bytes, key_end: bytes | None = None) -> tuple[str | None, str]:
    """-> (saddr or None, daddr); in ``masq_nets`` saddr is the prefix (``key_end`` needed)."""
    import _socket as socket
    af = socket.AF_INET if fam == 4 else socket.AF_INET6
    n = alen(fam)
    if set_name == MASQ_ALL:
        return None, socket.inet_ntop(af, key[:n])
    src = socket.inet_ntop(af, key[:n])
    if set_name == MASQ_NETS and key_end is not None:
        span = int.from_bytes(key[:n], "big") ^ int.from_bytes(key_end[:n], "big")
        src += f"/{8 * n - span.bit_length()}"
    return src, socket.inet_ntop(af, key[n:2 * n])


# -------------------------------------------------------------------- claims
def _v6(addr: str | None) -> bytes:
    if addr is None:
        return bytes(16)
    b = N.ip_bytes(addr)
    return b if len(b) == 16 else bytes(10) + b"\xff\xff" + b


def claim_prefix(proto: str, host_ip: str | None, port: int) -> bytes:
    """The forward-key part of a claim key (first 24 bytes)."""
    return _v6(host_ip) + proto_port(proto, port)


def claim_key(proto: str, host_ip: str | None, port: int, owner_hash: bytes) -> bytes:
    """``owner_hash``: :attr:`nlportmap.plan.Owner.hash` (16 bytes) of the claimant."""
    return claim_prefix(proto, host_ip, port) + owner_hash


def claim_data(container_ip: str, container_port: int) -> bytes:
    return _v6(container_ip) + N.pad4(container_port.to_bytes(2, "big"))


def live_data_from_claim(fam: int, data: bytes) -> bytes:
    """Claim data (v6 / v4-mapped address . port) -> the live map's data for family ``fam``."""
    addr = data[:16] if fam == 6 else data[12:16]
    return addr + data[16:20]


def claim_data_from_live(fam: int, data: bytes) -> bytes:
    n = alen(fam)
    return (data[:n] if fam == 6 else bytes(10) + b"\xff\xff" + data[:n]) + data[n:n + 4]


def parse_claim_key(fam: int, key: bytes) -> tuple[str, str | None, int]:
    """-> (proto, host_ip or None, host_port) of a claim key."""
    import _socket as socket
    protos = {v: k for k, v in N.L4PROTO.items()}
    raw = key[:16]
    hip = None
    if raw != bytes(16):
        hip = socket.inet_ntop(socket.AF_INET, raw[12:]) if fam == 4 else socket.inet_ntop(socket.AF_INET6, raw)
    return protos.get(key[16], str(key[16])), hip, int.from_bytes(key[20:22], "big")


# ------------------------------------------------------------------ manifest
def record_key(owner_hash: bytes, slot: int) -> bytes:
    """Key of slot ``slot`` (0..65535) of the manifest in ``owned`` of the owner whose
    :attr:`~nlportmap.plan.Owner.hash` is ``owner_hash``."""
    return owner_hash + N.pad4(slot.to_bytes(2, "big"))


def record_data(proto: str, host_ip: str | None, port: int, pod_ip: str) -> bytes:
    return claim_prefix(proto, host_ip, port) + _v6(pod_ip)


def parse_record(fam: int, data: bytes) -> tuple[str, str | None, int, str]:
    """-> (proto, host_ip or None, host_port, pod_ip) of a manifest record."""
    import _socket as socket
    proto, hip, port = parse_claim_key(fam, data[:24])
    raw = data[24:40]
    pod = socket.inet_ntop(socket.AF_INET, raw[12:]) if fam == 4 else socket.inet_ntop(socket.AF_INET6, raw)
    return proto, hip, port, pod


# --------------------------------------------------------------- conditions
MAX_CONDITION_RULES = 64


def compile_conditions(fam: int, conds: Sequence[Match] | None) -> list[list[Nest]]:
    """Parsed conditions -> alternatives (each a list of expressions; OR between them).

    ``==`` with an anonymous set of k values gives k alternatives; ``!=`` with
    a set is the AND of k inequalities.  Raises ValueError beyond
    :data:`MAX_CONDITION_RULES` alternatives.
    """
    if not conds:
        return [[]]
    from . import netlink as N  # pyroute2-built expressions: only when conditions are set
    alts: list[list[Nest]] = [[]]
    for c in conds or ():
        if c.field in ("saddr", "daddr"):
            one = [N.addr_match(fam, c.field, v, c.negate) for v in c.values]
        else:
            one = [N.ifname_match(c.field, v, c.negate) for v in c.values]
        if c.negate or len(one) == 1:
            merged = [e for part in one for e in part]
            alts = [a + merged for a in alts]
        else:
            alts = [a + part for a in alts for part in one]
        if len(alts) > MAX_CONDITION_RULES:
            raise ValueError(f"conditions expand to more than {MAX_CONDITION_RULES} rules")
    return alts


def fingerprint(fam: int, conds: Sequence[Match] | None) -> str:
    """Comment stored on the prerouting jump rules: layout version + conditions."""
    text = " ".join(str(c) for c in conds or ())
    h = _sha1(f"{LAYOUT_VERSION}|{fam}|{text}".encode()).hexdigest()[:12]
    # no double quotes or backslashes: `nft list ruleset` output must load back with `nft -f`
    shown = text.replace('"', "").replace("\\", "")
    c = f"nlportmap/{LAYOUT_VERSION} {h}" + (f" if {shown}" if shown else "")
    return c.encode()[:200].decode(errors="ignore")


# ------------------------------------------------------------------ skeleton
def skeleton(fam: int, conds: Sequence[Match] | None) -> list[Op]:
    """Ops that (re)create the table, sets, chains and their static rules.

    Idempotent: objects are added with CREATE|APPEND, chains are flushed and
    refilled, set elements (the mappings) are untouched.
    """
    from . import netlink as N  # pyroute2 message classes: only when the skeleton is (re)written
    F = N.FAMILY[fam]
    T = TABLE
    a = alen(fam)
    t = _t(fam)
    fp = fingerprint(fam, conds)
    ops = [N.new_table(F, T, comment=TABLE_COMMENT, flags=0)]  # flags 0: wakes a dormant table
    ops.append(N.new_set(F, T, HOSTPORTS, N.concat_type(N.T_PROTO, N.T_SERVICE), 8,
                         N.concat_type(t, N.T_SERVICE), a + 4,
                         comment="hostPort on any local address -> pod; element comment = owner", set_id=1))
    ops.append(N.new_set(F, T, HOSTIP_HOSTPORTS, N.concat_type(t, N.T_PROTO, N.T_SERVICE), a + 8,
                         N.concat_type(t, N.T_SERVICE), a + 4,
                         comment="hostIP:hostPort -> pod; element comment = owner", set_id=2))
    ops.append(N.new_set(F, T, MASQ_PAIRS, N.concat_type(t, t), 2 * a,
                         comment="masquerade DNATed saddr . daddr (localhost)", set_id=3))
    ops.append(N.new_interval_set(F, T, MASQ_NETS, N.concat_type(t, t), (a, a),
                                  comment="masquerade DNATed traffic from the pod's subnet . to the pod "
                                          "(hairpin, other pods on its bridge)", set_id=8))
    ops.append(N.new_set(F, T, MASQ_ALL, t, a,
                         comment="masquerade all DNATed traffic to these pods (masqAll)", set_id=4))
    ops.append(N.new_set(F, T, CLAIMS, N.concat_type(N.T_IPV6, N.T_PROTO, N.T_SERVICE, N.T_IPV6), 40,
                         N.concat_type(N.T_IPV6, N.T_SERVICE), 20,
                         comment="shadowed hostPort claims (hostIP . proto . port . owner hash); "
                                 "restored when the current owner is deleted", set_id=5))
    ops.append(N.new_set(F, T, OWNED, N.concat_type(N.T_IPV6, N.T_SERVICE), 20,
                         N.concat_type(N.T_IPV6, N.T_PROTO, N.T_SERVICE, N.T_IPV6), 40,
                         comment="per-owner manifest (owner hash . slot -> hostIP . proto . port . pod)",
                         set_id=6))
    ops.append(N.new_set(F, T, PROXY_VIPS, t, a,
                         comment="addresses on service proxy interfaces (serviceProxyInterfaces): "
                                 "never DNATed by any-address mappings; refreshed by each ADD", set_id=7))
    ops += [
        N.chain(F, T, "hostports", comment="DNAT by map lookup"),
        N.chain(F, T, "prerouting", "prerouting", -100, comment="traffic to local addresses -> hostports"),
        N.chain(F, T, "output", "output", -100, comment="locally generated traffic to local addresses -> hostports"),
        N.chain(F, T, "postrouting", "postrouting", 100, comment="masquerade hairpin/localhost/masqAll"),
    ]
    for c in ("hostports", "prerouting", "output", "postrouting"):
        ops.append(N.flush_chain(F, T, c))
    # hostports: specific hostIP first, then (unless the destination is a service proxy's
    # address, e.g. a ClusterIP on kube-ipvs0) any-address
    r = N.reg32(a // 4)
    ops.append(N.rule(F, T, "hostports", [
        N.payload(1, _off(fam, "daddr"), a), N.meta(N.META_L4PROTO, r), N.payload(2, 2, 2, N.reg32(a // 4 + 1)),
        N.lookup(HOSTIP_HOSTPORTS, N.REG_1, N.REG_1), N.nat(1, F, N.REG_1, r)], comment=fp))
    ops.append(N.rule(F, T, "hostports", [
        N.payload(1, _off(fam, "daddr"), a), N.lookup(PROXY_VIPS, N.REG_1), N.verdict(N.NFT_RETURN)], comment=fp))
    ops.append(N.rule(F, T, "hostports", [
        N.meta(N.META_L4PROTO), N.payload(2, 2, 2, N.reg32(1)),
        N.lookup(HOSTPORTS, N.REG_1, N.REG_1), N.nat(1, F, N.REG_1, r)], comment=fp))
    for alt in compile_conditions(fam, conds):
        for c in ("prerouting", "output"):
            ops.append(N.rule(F, T, c, alt + N.fib_daddr_local() + [N.verdict(N.NFT_JUMP, "hostports")], comment=fp))
    ops.append(N.rule(F, T, "postrouting", [
        *N.ct_status_dnat(), N.payload(1, _off(fam, "saddr"), a), N.payload(1, _off(fam, "daddr"), a, r),
        N.lookup(MASQ_PAIRS, N.REG_1), N.masq()], comment=fp))
    ops.append(N.rule(F, T, "postrouting", [
        *N.ct_status_dnat(), N.payload(1, _off(fam, "saddr"), a), N.payload(1, _off(fam, "daddr"), a, r),
        N.lookup(MASQ_NETS, N.REG_1), N.masq()], comment=fp))
    ops.append(N.rule(F, T, "postrouting", [
        *N.ct_status_dnat(), N.payload(1, _off(fam, "daddr"), a), N.lookup(MASQ_ALL, N.REG_1), N.masq()],
        comment=fp))
    if fam == 4:
        ops.append(N.chain(F, T, "localnet_guard", "prerouting", -300, ctype="filter",
                           comment="drop packets to 127.0.0.0/8 from non-loopback interfaces (CVE-2020-8558)"))
        ops.append(N.flush_chain(F, T, "localnet_guard"))
        ops.append(N.rule(F, T, "localnet_guard",
                          [*N.ifname_match("iifname", "lo", True),
                           N.payload(1, 16, 1), N.cmp(b"\x7f"), N.counter(), N.verdict(N.NF_DROP)],
                          comment=fp))
    return ops


def proxy_vips_ops(fam: int, addrs: Iterable[bytes]) -> list[Op]:
    """Ops that replace the elements of ``proxy_vips`` by ``addrs`` (packed addresses of
    family ``fam``): a flush, then the adds (in the caller's batch, so atomic)."""
    F = N.FAMILY[fam]
    ops = [N.flush_set(F, TABLE, PROXY_VIPS)]
    items: list[tuple[bytes, bytes | None, str | None]] = [
        (b, None, None) for b in dict.fromkeys(addrs) if len(b) == alen(fam)]
    for i in range(0, len(items), 200):
        ops.append(N.set_elems(True, F, TABLE, PROXY_VIPS, items[i:i + 200]))
    return ops


def expected_rules(fam: int, conds: Sequence[Match] | None) -> dict[str, int]:
    """Static rules per chain the skeleton installs (all carry the fingerprint comment)."""
    n = len(compile_conditions(fam, conds))
    out = {"prerouting": n, "output": n, "hostports": 3, "postrouting": 3}
    if fam == 4:
        out["localnet_guard"] = 1
    return out
