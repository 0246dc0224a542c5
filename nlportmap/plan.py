"""The pure planning core: config + prevResult -> kernel-neutral plan.

Nothing here opens a socket or a file.  A :class:`Plan` says *what* must exist
for one attachment (owner = container ID + ifname); each backend (``nft/``,
``ipt/``) decides *how* and applies it as one transaction.  ``Plan.describe()``
is the dry-run text.

Address families are the integers 4 and 6.  Ports are host-order ints in
1..65535.  Addresses are strings in canonical ``ipaddress`` form (no prefix).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


__all__ = ["Owner", "Forward", "Masq", "Plan", "Listed", "make_plan", "OWNER_COMMENT_MAX"]

#: Longest owner comment we store (bytes).  nftables element/rule userdata is
#: limited to 256 bytes (NFT_USERDATA_MAXLEN, include/uapi/linux/netfilter/nf_tables.h
#: era 5.x); a TLV header takes 2, the NUL 1.  We keep a margin.
OWNER_COMMENT_MAX = 236  # + " @<13-digit ms timestamp>" stays under 253 (2-byte TLV header, NUL)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns kernel state: the CNI attachment (containerID, ifname), plus the network name.

    ``tag`` (``"<containerID>/<ifname>"``) is the identity used for ownership
    checks; ``comment`` (``tag`` + space + network name, cut to
    :data:`OWNER_COMMENT_MAX` bytes) is what operators see next to each element.
    """

    container_id: str
    ifname: str
    network: str = ""

    @property
    def tag(self) -> str:
        # container IDs and network names are regex-validated; an interface name may hold
        # '"' or '\\', which would make `nft list ruleset` output unloadable: mapped to '_'
        ifname = self.ifname.replace('"', "_").replace("\\", "_")
        return f"{self.container_id}/{ifname}"

    @property
    def comment(self) -> str:
        c = f"{self.tag} {self.network}" if self.network else self.tag
        b = c.encode()
        if len(b) > OWNER_COMMENT_MAX:
            c = b[:OWNER_COMMENT_MAX].decode(errors="ignore")
        return c

    def stamped(self, ms: int) -> str:
        """The comment stored on elements: ``comment`` + ``" @<ms since epoch>"`` (creation
        time; GC spares elements created after it started)."""
        return f"{self.comment} @{ms}"

    @staticmethod
    def tag_of(comment: str | None) -> str | None:
        """The identity tag inside a stored comment (``None`` if not ours)."""
        if not comment:
            return None
        return comment.split(" ", 1)[0]

    @staticmethod
    def created_ms(comment: str | None) -> int | None:
        """The creation stamp of a stored comment (None if absent)."""
        if comment and " @" in comment:
            t = comment.rsplit(" @", 1)[1]
            if t.isdigit():
                return int(t)
        return None

    @staticmethod
    def parse(comment: str | None) -> "Owner | None":
        """Rebuild an owner from a stored comment (for listings and GC)."""
        tag = Owner.tag_of(comment)
        if not tag or "/" not in tag:
            return None
        cid, ifname = tag.rsplit("/", 1)
        parts = comment.split(" ")
        net = parts[1] if len(parts) > 1 and not parts[1].startswith("@") else ""
        return Owner(cid, ifname, net)


@dataclass(frozen=True, slots=True)
class Forward:
    """One DNAT: (family, proto, host_ip|any, host_port) -> container_ip:container_port.

    ``host_ip`` is ``None`` for "any local address" (absent, ``0.0.0.0`` or ``::``).
    ``proto`` is lower case: ``tcp``, ``udp`` or ``sctp``.
    """

    family: int
    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int

    @property
    def key(self) -> tuple:
        """The host-side identity of this forward (what two claimants can collide on)."""
        return (self.family, self.proto, self.host_ip, self.host_port)

    def __str__(self) -> str:
        hip = self.host_ip or ("0.0.0.0" if self.family == 4 else "::")
        h = f"[{hip}]" if self.family == 6 else hip
        c = f"[{self.container_ip}]" if self.family == 6 else self.container_ip
        return f"{self.proto} {h}:{self.host_port} -> {c}:{self.container_port}"


@dataclass(frozen=True, slots=True)
class Masq:
    """Masquerade DNATed traffic from ``saddr`` (``None`` = any source, masqAll) to ``daddr``.

    The hairpin case is ``saddr == daddr == container IP``; the IPv4 localhost
    case is ``saddr = 127.0.0.1``.
    """

    family: int
    saddr: str | None
    daddr: str

    def __str__(self) -> str:
        return f"masquerade {self.saddr or 'any'} -> {self.daddr}"


@dataclass(frozen=True)
class Plan:
    """Everything one attachment needs.  Built by :func:`make_plan`; pure data."""

    owner: Owner
    forwards: tuple[Forward, ...] = ()
    masqs: tuple[Masq, ...] = ()
    #: family -> parsed nftables-style conditions (table-wide, see nft backend)
    conditions: dict = field(default_factory=dict)
    #: family -> raw iptables-style condition tokens (per container, ipt backend)
    raw_conditions: dict = field(default_factory=dict)
    snat: bool = True
    masq_all: bool = False
    mark_bit: int = 13
    external_mark_chain: str | None = None
    #: (family, proto, host_port) whose stale conntrack entries are deleted after commit
    conntrack_flush: tuple[tuple[int, str, int], ...] = ()
    #: IPv4 container address whose route's interface gets route_localnet=1 (None: skip)
    route_localnet_ip: str | None = None
    #: container addresses with prefix, as found in prevResult (iptables hairpin uses them)
    container_cidrs: dict = field(default_factory=dict)
    #: all mappings of the config, in order (the iptables entry rules need even skipped ones)
    all_mappings: tuple = ()
    #: host-side keys (family, proto, host_ip|None, host_port) for BOTH families,
    #: computed from portMappings alone: DEL finds its elements even without prevResult
    host_keys: tuple[tuple[int, str, str | None, int], ...] = ()
    #: {4: [packed addresses], 6: [...]} on the service proxy's interfaces
    #: (``serviceProxyInterfaces``, read by :func:`nlportmap.proxyvips.proxy_addresses`):
    #: the nftables backend makes its ``proxy_vips`` set exactly these in ADD's batch.
    #: None: not read, the set is left as it is.  Filled in by the caller (it is kernel
    #: state, and make_plan is pure).
    proxy_vips: dict | None = None

    def families(self) -> tuple[int, ...]:
        return tuple(sorted({f.family for f in self.forwards} | {m.family for m in self.masqs}))

    def describe(self) -> str:
        """Human dry-run text: one line per object, grouped by kind."""
        lines = [f"owner {self.owner.tag} network {self.owner.network!r}"]
        lines += [f"  dnat {f}" for f in self.forwards]
        lines += [f"  {m}" for m in self.masqs]
        for fam, conds in sorted(self.conditions.items()):
            if conds:
                lines.append(f"  conditions ipv{fam}: " + " ".join(str(c) for c in conds))
        for fam, proto, port in self.conntrack_flush:
            lines.append(f"  conntrack delete ipv{fam} {proto} dport {port}")
        if self.route_localnet_ip:
            lines.append(f"  sysctl route_localnet=1 on route to {self.route_localnet_ip}")
        return "\n".join(lines)


def _family(ip: str) -> int:
    a = ipaddress.ip_address(ip)
    if a.version == 6 and a.ipv4_mapped is not None:
        return 4
    return a.version


def _norm_host_ip(host_ip: str | None, fam: int) -> "str | None | bool":
    """hostIP for family ``fam``: None = any address, False = other family (skip)."""
    if not host_ip:
        return None
    if _family(host_ip) != fam:
        return False
    a = ipaddress.ip_address(host_ip)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return None if a.is_unspecified else str(a)


@dataclass(frozen=True, slots=True)
class Listed:
    """One installed forward as read back from the kernel (``nlportmap list``)."""

    owner: "Owner | None"
    family: int
    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int
    backend: str
    #: "active" (packets use it) or "shadowed" (taken over by a newer ADD; restored on its DEL)
    state: str = "active"

    def to_dict(self) -> dict:
        o = self.owner
        return {"containerID": o.container_id if o else None, "ifname": o.ifname if o else None,
                "network": o.network if o else None, "family": self.family, "protocol": self.proto,
                "hostIP": self.host_ip, "hostPort": self.host_port, "containerIP": self.container_ip,
                "containerPort": self.container_port, "backend": self.backend, "state": self.state}


def _conditions(conf, fam: int) -> tuple:
    """``conf.parsed_conditions(fam)``, except for a config parsed for DEL: there an
    invalid list was tolerated (:mod:`nlportmap.config`, DEL leniency) and counts as
    none -- DEL removes elements by owner and never uses the conditions."""
    from .errors import InvalidConfig
    try:
        return conf.parsed_conditions(fam)
    except InvalidConfig:
        if getattr(conf, "__dict__", {}).get("_command") == "DEL":
            return ()
        raise


def make_plan(conf, container_ips: dict, owner: Owner) -> Plan:
    """Build the plan for one attachment.

    ``conf``: a decoded :class:`nlportmap.config.NetConf` (validated).
    ``container_ips``: ``{4: "10.0.0.2/24" | None, 6: "fd00::2/64" | None}``
    (interface form with prefix, as selected from prevResult by
    :func:`nlportmap.result.container_ips`).
    Mappings whose hostIP is of the other family are skipped for that family
    (upstream §2.5); an unspecified hostIP means any local address.
    Never raises for a validated config.
    """
    forwards: list[Forward] = []
    masqs: list[Masq] = []
    flush: list[tuple[int, str, int]] = []
    mappings = tuple(conf.runtimeConfig.portMappings) if conf.runtimeConfig else ()
    cidrs = {f: c for f, c in container_ips.items() if c}
    for fam in (4, 6):
        cidr = cidrs.get(fam)
        if not cidr:
            continue
        cip = str(ipaddress.ip_interface(cidr).ip)
        seen: set = set()
        for m in mappings:
            proto = m.protocol.lower()
            hip = _norm_host_ip(m.hostIP, fam)
            if hip is False:
                continue
            fw = Forward(fam, proto, hip, m.hostPort, cip, m.containerPort)
            if fw.key in seen:  # duplicate key in one config: first one wins (documented)
                continue
            seen.add(fw.key)
            forwards.append(fw)
        if not any(f.family == fam for f in forwards):
            continue
        if conf.snat:
            if conf.masqAll:
                masqs.append(Masq(fam, None, cip))
            else:
                masqs.append(Masq(fam, cip, cip))
                if fam == 4:
                    masqs.append(Masq(fam, "127.0.0.1", cip))
        for m in mappings:
            if m.protocol.lower() in ("udp", "sctp") and (fam, m.protocol.lower(), m.hostPort) not in flush:
                flush.append((fam, m.protocol.lower(), m.hostPort))
    host_keys: list = []
    for fam in (4, 6):
        for m in mappings:
            hip = _norm_host_ip(m.hostIP, fam)
            if hip is False:
                continue
            k = (fam, m.protocol.lower(), hip, m.hostPort)
            if k not in host_keys:
                host_keys.append(k)
    v4 = cidrs.get(4)
    route_ip = str(ipaddress.ip_interface(v4).ip) if (v4 and conf.snat and any(f.family == 4 for f in forwards)) else None
    return Plan(
        owner=owner,
        forwards=tuple(forwards),
        masqs=tuple(masqs),
        conditions={4: _conditions(conf, 4), 6: _conditions(conf, 6)},
        raw_conditions={4: conf.conditionsV4, 6: conf.conditionsV6},
        snat=conf.snat,
        masq_all=conf.masqAll,
        mark_bit=conf.markMasqBit if conf.markMasqBit is not None else 13,
        external_mark_chain=conf.externalSetMarkChain,
        conntrack_flush=tuple(flush),
        route_localnet_ip=route_ip,
        container_cidrs=cidrs,
        all_mappings=mappings,
        host_keys=tuple(host_keys),
    )
