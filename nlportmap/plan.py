"""The pure planning core: config + prevResult -> kernel-neutral plan.

Nothing here opens a socket or a file.  A :class:`Plan` says *what* must exist
for one attachment (owner = network + container ID + ifname); each backend (``nft/``,
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
    from typing import Any, Literal, Protocol, Self

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

    def replace(self, **changes: object) -> Self:
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

#: Longest owner comment we store (bytes), without the `` @<ms>`` stamp.  nftables
#: element/rule userdata is limited to 256 bytes (NFT_USERDATA_MAXLEN,
#: include/uapi/linux/netfilter/nf_tables.h era 5.x); a TLV header takes 2, the NUL 1, the
#: stamp 15.  A full identity is at most ``OWNER_COMMENT_MAX - 1`` bytes; a longer one is
#: stored in its hashed form of exactly ``OWNER_COMMENT_MAX`` bytes (see :class:`Owner`).
OWNER_COMMENT_MAX = 236

if TYPE_CHECKING:  # pragma: no cover - typeshed knows hashlib, not the C module behind it
    from hashlib import sha256 as _sha256
else:
    try:  # the C module directly: 'hashlib' costs ~1.7 ms of a cold start
        from _sha256 import sha256 as _sha256
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha256 as _sha256

#: bytes an interface name keeps as they are in an owner tag; every other byte is written
#: ``%XX`` (upper-case hex).  The CNI name alphabet: containerIDs and network names use
#: only these, so no separator ('/', ' ', '~', '%', '@') can come from a name.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HEX = frozenset("0123456789ABCDEF")
_HASHED_TAIL = 33  # "~" + 32 hex digits
#: domain separation of the owner hash (owner format 2) from format 1's sha256(tag)[:16]
_HASH_SALT = b"nlportmap owner 2\0"


def _pct(ifname: str) -> str:
    """Reversible encoding of an interface name's exact bytes (injective)."""
    return "".join(chr(c) if c in _SAFE else f"%{c:02X}" for c in ifname.encode("utf-8", "surrogateescape"))


def _unpct(enc: str) -> str | None:
    """Inverse of :func:`_pct`; None if ``enc`` is not a canonical encoding."""
    out = bytearray()
    i, n = 0, len(enc)
    while i < n:
        ch = enc[i]
        if ch == "%":
            h = enc[i + 1:i + 3]
            if len(h) != 2 or not _HEX.issuperset(h) or int(h, 16) in _SAFE:
                return None
            out.append(int(h, 16))
            i += 3
        elif ord(ch) < 128 and ord(ch) in _SAFE:
            out.append(ord(ch))
            i += 1
        else:
            return None
    return out.decode("utf-8", "surrogateescape") if out else None


def _name_ok(s: str) -> bool:
    return bool(s) and s.isascii() and all(ord(c) in _SAFE for c in s)


class Owner(_Record):
    """Who owns kernel state: the CNI attachment (network, containerID, ifname).

    The identity is stored in every element's comment: ``comment`` =
    ``"<containerID>/<ifname %-encoded> <network>"``; :meth:`stamped` appends
    ``" @<created ms>"``.  The interface name keeps the bytes ``[A-Za-z0-9_.-]``
    and writes every other byte as ``%XX``, so ``e"0`` is ``e%220`` and ``e_0``
    stays ``e_0``: injective for every name the kernel allows, readable for the usual
    ones (``eth0``), and free of ``"``/``\\`` (``nft list ruleset`` output loads back).
    containerIDs and network names are validated to ``[A-Za-z0-9][A-Za-z0-9_.-]*``.

    A comment that would exceed ``OWNER_COMMENT_MAX - 1`` bytes (long IDs or network
    names) is stored in its *hashed form*: its first ``OWNER_COMMENT_MAX - 33`` bytes,
    ``"~"`` and 32 hex digits of its sha256 -- still one comment per identity.

    ``hash`` (16 bytes, sha256 of the comment) names the owner inside ``claims`` and
    ``owned`` keys (:mod:`nlportmap.nft.layout`).

    **Older releases** (owner format 1) wrote ``"<containerID>/<ifname with '\"' and
    '\\\\' mapped to '_'> <network>"`` cut to :data:`OWNER_COMMENT_MAX` bytes and keyed
    claims and manifests by ``sha256("<containerID>/<mapped ifname>")[:16]``
    (``legacy_hash``).  :meth:`owns` also accepts such a comment (``legacy_comment``)
    unless it reads as another owner's identity in the current format (a legacy comment
    of ``e"0`` is ``c/e_0 net``, which is ``e_0``'s identity: such state counts as
    ``e_0``'s, as the old layout itself could not tell them apart).
    """

    __slots__ = ("container_id", "ifname", "network")
    container_id: str
    ifname: str
    network: str

    def __init__(self, container_id: str, ifname: str, network: str = "") -> None:
        self._init(container_id=container_id, ifname=ifname, network=network)

    # ------------------------------------------------------------ format
    @property
    def tag(self) -> str:
        """``"<containerID>/<ifname %-encoded>"``: the attachment without its network."""
        return f"{self.container_id}/{_pct(self.ifname)}"

    @property
    def comment(self) -> str:
        """The identity as stored (without the creation stamp); see the class docstring."""
        c = f"{self.tag} {self.network}" if self.network else self.tag
        b = c.encode()
        if len(b) < OWNER_COMMENT_MAX:
            return c
        return (b[:OWNER_COMMENT_MAX - _HASHED_TAIL].decode(errors="ignore") + "~"
                + _sha256(b).hexdigest()[:32])

    @property
    def hash(self) -> bytes:
        """16 bytes naming this owner inside ``claims``/``owned`` keys."""
        return _sha256(_HASH_SALT + self.comment.encode()).digest()[:16]

    @property
    def legacy_comment(self) -> str:
        """What owner format 1 stored (see the class docstring)."""
        c = f"{self.legacy_tag} {self.network}" if self.network else self.legacy_tag
        b = c.encode("utf-8", "surrogateescape")
        return b[:OWNER_COMMENT_MAX].decode(errors="ignore") if len(b) > OWNER_COMMENT_MAX else c

    @property
    def legacy_tag(self) -> str:
        return f"{self.container_id}/" + self.ifname.replace('"', "_").replace("\\", "_")

    @property
    def legacy_hash(self) -> bytes:
        return _sha256(self.legacy_tag.encode("utf-8", "surrogateescape")).digest()[:16]

    def stamped(self, ms: int) -> str:
        """The comment stored on elements: ``comment`` + ``" @<ms since epoch>"`` (creation
        time; GC spares elements created after it started)."""
        return f"{self.comment} @{ms}"

    @staticmethod
    def from_tag(tag: str, network: str = "") -> Owner | None:
        """The owner of ``tag`` (``"<containerID>/<encoded ifname>"``) in ``network``."""
        cid, sep, enc = tag.partition("/")
        ifname = _unpct(enc) if sep else None
        return Owner(cid, ifname, network) if ifname is not None else None

    # ------------------------------------------------------------ parse
    @staticmethod
    def base(comment: str | None) -> str:
        """A stored comment without its creation stamp."""
        if not comment:
            return ""
        head, sep, t = comment.rpartition(" @")
        return head if sep and t.isdigit() else comment

    @staticmethod
    def created_ms(comment: str | None) -> int | None:
        """The creation stamp of a stored comment (None if absent)."""
        if comment and " @" in comment:
            t = comment.rsplit(" @", 1)[1]
            if t.isdigit():
                return int(t)
        return None

    @staticmethod
    def _hashed(base: str) -> bool:
        return (len(base) == OWNER_COMMENT_MAX and base[-_HASHED_TAIL] == "~"
                and all(c in "0123456789abcdef" for c in base[-32:]))

    @staticmethod
    def _current(base: str) -> bool:
        """Is ``base`` some owner's identity in the current format?"""
        if Owner._hashed(base):
            return True
        if len(base.encode("utf-8", "surrogateescape")) >= OWNER_COMMENT_MAX:
            return False
        tag, _, net = base.partition(" ")
        o = Owner.from_tag(tag, net)
        return o is not None and _name_ok(o.container_id) and (not net or _name_ok(net))

    def owns(self, comment: str | None) -> bool:
        """Does the stored ``comment`` name this owner (current or older layout)?"""
        b = Owner.base(comment)
        if not b:
            return False
        if b == self.comment:
            return True
        return b == self.legacy_comment and not Owner._current(b)

    @staticmethod
    def hash_of(comment: str | None) -> bytes | None:
        """The owner hash of whoever a stored comment names (for the claim of a displaced
        owner): ``hash`` for the current format, ``legacy_hash`` for an older one."""
        b = Owner.base(comment)
        if not b:
            return None
        if Owner._current(b):
            return _sha256(_HASH_SALT + b.encode()).digest()[:16]
        return _sha256(b.split(" ", 1)[0].encode()).digest()[:16]

    @staticmethod
    def parse(comment: str | None) -> Owner | None:
        """Rebuild an owner from a stored comment (for listings and GC).  A hashed form
        gives what its readable part holds (the network possibly cut); a comment of an
        older layout gives its ifname as stored (``"``/``\\`` read as ``_``)."""
        b = Owner.base(comment)
        if not b or "/" not in b:
            return None
        if Owner._hashed(b):
            b = b[:-_HASHED_TAIL]
            if " " not in b:
                return None  # cut inside the interface name
        tag, _, net = b.partition(" ")
        o = Owner.from_tag(tag, net)
        if o is not None:
            return o
        cid, _, ifname = tag.partition("/")  # older layout: the name as stored
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
                 "backend", "state", "recorded")
    owner: Owner | None
    family: int
    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int
    backend: str
    #: "active" (packets use it), "shadowed" (taken over by a newer ADD; restored on its DEL) or
    #: "missing" (recorded for self-healing but not in the kernel: ``nlportmap restore`` brings it back)
    state: str
    #: whether the owner has a self-healing record (None: not compared)
    recorded: bool | None

    def __init__(self, owner: Owner | None, family: int, proto: str, host_ip: str | None, host_port: int,
                 container_ip: str, container_port: int, backend: str, state: str = "active",
                 recorded: bool | None = None) -> None:
        self._init(owner=owner, family=family, proto=proto, host_ip=host_ip, host_port=host_port,
                   container_ip=container_ip, container_port=container_port, backend=backend, state=state,
                   recorded=recorded)

    def to_dict(self) -> dict[str, Any]:
        o = self.owner
        return {"containerID": o.container_id if o else None, "ifname": o.ifname if o else None,
                "network": o.network if o else None, "family": self.family, "protocol": self.proto,
                "hostIP": self.host_ip, "hostPort": self.host_port, "containerIP": self.container_ip,
                "containerPort": self.container_port, "backend": self.backend, "state": self.state,
                "recorded": self.recorded}


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
            if m.protocol.lower() in ("udp", "sctp"):
                flush.append((fam, m.protocol.lower(), m.hostPort))
    flush = list(dict.fromkeys(flush))  # first occurrences, in order (O(n))
    host_keys: dict[tuple[int, str, str | None, int], None] = {}
    for fam in (4, 6):
        for m in mappings:
            hip = _norm_host_ip(m.hostIP, fam)
            if hip is False:
                continue
            host_keys.setdefault((fam, m.protocol.lower(), hip, m.hostPort), None)
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
