"""The pure planning core: config + prevResult -> kernel-neutral plan.

Nothing here opens a socket or a file.  A :class:`Plan` says *what* must exist
for one attachment (owner = container ID + ifname); each backend (``nft/``,
``ipt/``) decides *how* and applies it as one transaction.  ``Plan.describe()``
is the dry-run text.

Address families are the integers 4 and 6.  Ports are host-order ints in
1..65535.  Addresses are strings in canonical ``ipaddress`` form (no prefix).
"""
from __future__ import annotations

from . import addr

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence
    from typing import Any, Literal, Protocol

    from .conditions import Match

    class _Mapping(Protocol):
        """A port mapping as config/netconf decode it."""

        @property
        def hostPort(self) -> int: ...
        @property
        def containerPort(self) -> int: ...
        @property
        def protocol(self) -> str: ...
        @property
        def hostIP(self) -> str | None: ...

    class _RuntimeConfig(Protocol):
        @property
        def portMappings(self) -> Sequence[_Mapping]: ...

    class PlanConf(Protocol):
        """What :func:`make_plan` reads of a decoded configuration (config.NetConf, netconf.FastConf)."""

        @property
        def runtimeConfig(self) -> _RuntimeConfig | None: ...
        @property
        def snat(self) -> bool: ...
        @property
        def masqAll(self) -> bool: ...
        @property
        def markMasqBit(self) -> int | None: ...
        @property
        def externalSetMarkChain(self) -> str | None: ...
        @property
        def conditionsV4(self) -> list[str] | None: ...
        @property
        def conditionsV6(self) -> list[str] | None: ...
        def parsed_conditions(self, family: int) -> tuple[Match, ...]: ...


__all__ = ["OWNER_COMMENT_MAX", "Forward", "Listed", "Masq", "Owner", "Plan", "make_plan"]


class _Record:
    """Frozen value object over ``__slots__`` (what ``@dataclass(frozen=True, slots=True)``
    gives, without importing ``dataclasses``: ~5 ms of a cold start).  Subclasses list
    their fields in ``__slots__`` and set them with ``_init``."""

    __slots__: tuple[str, ...] = ()

    def _init(self, **values: object) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def replace(self, **changes: object) -> _Record:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        new = object.__new__(type(self))
        new._init(**{k: changes.pop(k, getattr(self, k)) for k in self.__slots__})
        if changes:
            raise TypeError(f"unknown fields {sorted(changes)}")
        return new

    def _astuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._astuple()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

#: Longest owner comment we store (bytes).  nftables element/rule userdata is
#: limited to 256 bytes (NFT_USERDATA_MAXLEN, include/uapi/linux/netfilter/nf_tables.h
#: era 5.x); a TLV header takes 2, the NUL 1.  We keep a margin.
OWNER_COMMENT_MAX = 236  # + " @<13-digit ms timestamp>" stays under 253 (2-byte TLV header, NUL)


class Owner(_Record):
    """Who owns kernel state: the CNI attachment (containerID, ifname), plus the network name.

    ``tag`` (``"<containerID>/<ifname>"``) is the identity used for ownership
    checks; ``comment`` (``tag`` + space + network name, cut to
    :data:`OWNER_COMMENT_MAX` bytes) is what operators see next to each element.
    """

    __slots__ = ("container_id", "ifname", "network")
    container_id: str
    ifname: str
    network: str

    def __init__(self, container_id: str, ifname: str, network: str = "") -> None:
        self._init(container_id=container_id, ifname=ifname, network=network)

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
    def parse(comment: str | None) -> Owner | None:
        """Rebuild an owner from a stored comment (for listings and GC)."""
        tag = Owner.tag_of(comment)
        if not tag or "/" not in tag:
            return None
        cid, ifname = tag.rsplit("/", 1)
        parts = (comment or "").split(" ")  # a tag implies a comment
        net = parts[1] if len(parts) > 1 and not parts[1].startswith("@") else ""
        return Owner(cid, ifname, net)


class Forward(_Record):
    """One DNAT: (family, proto, host_ip|any, host_port) -> container_ip:container_port.

    ``host_ip`` is ``None`` for "any local address" (absent, ``0.0.0.0`` or ``::``).
    ``proto`` is lower case: ``tcp``, ``udp`` or ``sctp``.
    """

    __slots__ = ("family", "proto", "host_ip", "host_port", "container_ip", "container_port")
    family: int
    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int

    def __init__(self, family: int, proto: str, host_ip: str | None, host_port: int,
                 container_ip: str, container_port: int) -> None:
        self._init(family=family, proto=proto, host_ip=host_ip, host_port=host_port,
                   container_ip=container_ip, container_port=container_port)

    @property
    def key(self) -> tuple[int, str, str | None, int]:
        """The host-side identity of this forward (what two claimants can collide on)."""
        return (self.family, self.proto, self.host_ip, self.host_port)

    def __str__(self) -> str:
        hip = self.host_ip or ("0.0.0.0" if self.family == 4 else "::")
        h = f"[{hip}]" if self.family == 6 else hip
        c = f"[{self.container_ip}]" if self.family == 6 else self.container_ip
        return f"{self.proto} {h}:{self.host_port} -> {c}:{self.container_port}"


class Masq(_Record):
    """Masquerade DNATed traffic from ``saddr`` (``None`` = any source, masqAll) to ``daddr``.

    ``saddr`` is an address or a prefix (``10.42.0.0/24``).  The container's own subnet
    (from prevResult) covers hairpin (the pod to itself) and every other pod on its
    bridge, whose replies would otherwise go straight back over the bridge (as
    iptables' ``-s <containerNet>``); the IPv4 localhost case is ``saddr = 127.0.0.1``.
    """

    __slots__ = ("family", "saddr", "daddr")
    family: int
    saddr: str | None
    daddr: str

    def __init__(self, family: int, saddr: str | None, daddr: str) -> None:
        self._init(family=family, saddr=saddr, daddr=daddr)

    def __str__(self) -> str:
        return f"masquerade {self.saddr or 'any'} -> {self.daddr}"


class Plan(_Record):
    """Everything one attachment needs.  Built by :func:`make_plan`; pure data.

    ``conditions``: family -> parsed nftables-style conditions (table-wide, see nft
    backend); ``raw_conditions``: family -> raw iptables-style tokens (per container,
    ipt backend); ``conntrack_flush``: (family, proto, host_port) whose stale conntrack
    entries are deleted after commit; ``route_localnet_ip``: IPv4 container address whose
    route's interface gets route_localnet=1 (None: skip); ``container_cidrs``: container
    addresses with prefix, as found in prevResult (iptables hairpin uses them);
    ``all_mappings``: all mappings of the config, in order (the iptables entry rules need
    even skipped ones); ``host_keys``: (family, proto, host_ip|None, host_port) for BOTH
    families, from portMappings alone, so DEL finds its elements even without prevResult;
    ``proxy_vips``: {4: [packed addresses], 6: [...]} on the service proxy's interfaces
    (``serviceProxyInterfaces``, read by :func:`nlportmap.proxyvips.proxy_addresses`): the
    nftables backend makes its ``proxy_vips`` set exactly these in ADD's batch; None: not
    read, the set is left as it is.  Filled in by the caller (kernel state; make_plan is pure).
    """

    __slots__ = ("owner", "forwards", "masqs", "conditions", "raw_conditions", "snat", "masq_all",
                 "mark_bit", "external_mark_chain", "conntrack_flush", "route_localnet_ip",
                 "container_cidrs", "all_mappings", "host_keys", "proxy_vips")
    owner: Owner
    forwards: tuple[Forward, ...]
    masqs: tuple[Masq, ...]
    conditions: dict[int, tuple[Match, ...]]
    raw_conditions: dict[int, list[str] | None]
    snat: bool
    masq_all: bool
    mark_bit: int
    external_mark_chain: str | None
    conntrack_flush: tuple[tuple[int, str, int], ...]
    route_localnet_ip: str | None
    container_cidrs: dict[int, str]
    all_mappings: tuple[_Mapping, ...]
    host_keys: tuple[tuple[int, str, str | None, int], ...]
    proxy_vips: dict[int, tuple[bytes, ...]] | None

    def __init__(self, owner: Owner, forwards: tuple[Forward, ...] = (), masqs: tuple[Masq, ...] = (),
                 conditions: dict[int, tuple[Match, ...]] | None = None,
                 raw_conditions: dict[int, list[str] | None] | None = None, snat: bool = True,
                 masq_all: bool = False, mark_bit: int = 13, external_mark_chain: str | None = None,
                 conntrack_flush: tuple[tuple[int, str, int], ...] = (), route_localnet_ip: str | None = None,
                 container_cidrs: dict[int, str] | None = None, all_mappings: tuple[_Mapping, ...] = (),
                 host_keys: tuple[tuple[int, str, str | None, int], ...] = (),
                 proxy_vips: dict[int, tuple[bytes, ...]] | None = None) -> None:
        self._init(owner=owner, forwards=forwards, masqs=masqs, conditions=conditions or {},
                   raw_conditions=raw_conditions or {}, snat=snat, masq_all=masq_all, mark_bit=mark_bit,
                   external_mark_chain=external_mark_chain, conntrack_flush=conntrack_flush,
                   route_localnet_ip=route_localnet_ip, container_cidrs=container_cidrs or {},
                   all_mappings=all_mappings, host_keys=host_keys, proxy_vips=proxy_vips)

    def pod_flows(self) -> list[tuple[int, str, int, str]]:
        """``(family, proto, host port, pod IP)`` of the UDP/SCTP forwards: whose conntrack
        entries DEL deletes (with the pod IP from prevResult; without it, from what the
        backend removed, see ``Backend.unforward``)."""
        return [(f.family, f.proto, f.host_port, f.container_ip) for f in self.forwards
                if f.proto in ("udp", "sctp")]

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
        for fam, proto, port, pod in self.pod_flows():
            lines.append(f"  on DEL: conntrack delete ipv{fam} {proto} dport {port} reply src {pod}")
        if self.route_localnet_ip:
            lines.append(f"  sysctl route_localnet=1 on route to {self.route_localnet_ip}")
        return "\n".join(lines)


def _norm_host_ip(host_ip: str | None, fam: int) -> str | Literal[False] | None:
    """hostIP for family ``fam``: None = any address, False = other family (skip)."""
    if not host_ip:
        return None
    version, p = addr.parse_ip(host_ip)
    if version == 6 and p[:12] == bytes(10) + b"\xff\xff":
        version, p = 4, p[12:]
    if version != fam:
        return False
    return None if not any(p) else addr.canonical(version, p)


class Listed(_Record):
    """One installed forward as read back from the kernel (``nlportmap list``)."""

    __slots__ = ("owner", "family", "proto", "host_ip", "host_port", "container_ip", "container_port",
                 "backend", "state")
    owner: Owner | None
    family: int
    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int
    backend: str
    #: "active" (packets use it) or "shadowed" (taken over by a newer ADD; restored on its DEL)
    state: str

    def __init__(self, owner: Owner | None, family: int, proto: str, host_ip: str | None, host_port: int,
                 container_ip: str, container_port: int, backend: str, state: str = "active") -> None:
        self._init(owner=owner, family=family, proto=proto, host_ip=host_ip, host_port=host_port,
                   container_ip=container_ip, container_port=container_port, backend=backend, state=state)

    def to_dict(self) -> dict[str, Any]:
        o = self.owner
        return {"containerID": o.container_id if o else None, "ifname": o.ifname if o else None,
                "network": o.network if o else None, "family": self.family, "protocol": self.proto,
                "hostIP": self.host_ip, "hostPort": self.host_port, "containerIP": self.container_ip,
                "containerPort": self.container_port, "backend": self.backend, "state": self.state}


def _conditions(conf: PlanConf, fam: int) -> tuple[Match, ...]:
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


def _network(version: int, packed: bytes, plen: int) -> str:
    """``str(ipaddress.ip_interface(...).network)`` from its parts: ``10.42.0.0/24``."""
    bits = 8 * len(packed)
    mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
    net = (int.from_bytes(packed, "big") & mask).to_bytes(len(packed), "big")
    return f"{addr.canonical(version, net)}/{plen}"


def make_plan(conf: PlanConf, container_ips: dict[int, str | None], owner: Owner) -> Plan:
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
        version, packed, plen = addr.parse_interface(cidr)
        cip = addr.canonical(version, packed)
        seen: set[tuple[int, str, str | None, int]] = set()
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
                masqs.append(Masq(fam, _network(version, packed, plen), cip))
                if fam == 4:
                    masqs.append(Masq(fam, "127.0.0.1", cip))
        for m in mappings:
            if m.protocol.lower() in ("udp", "sctp") and (fam, m.protocol.lower(), m.hostPort) not in flush:
                flush.append((fam, m.protocol.lower(), m.hostPort))
    host_keys: list[tuple[int, str, str | None, int]] = []
    for fam in (4, 6):
        for m in mappings:
            hip = _norm_host_ip(m.hostIP, fam)
            if hip is False:
                continue
            k = (fam, m.protocol.lower(), hip, m.hostPort)
            if k not in host_keys:
                host_keys.append(k)
    v4 = cidrs.get(4)
    route_ip = (addr.canonical(4, addr.parse_interface(v4)[1])
                if (v4 and conf.snat and any(f.family == 4 for f in forwards)) else None)
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
