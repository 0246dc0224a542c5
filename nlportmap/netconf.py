"""The decoded configuration's shared half: constants, behaviour, and the cold decoder.

:mod:`nlportmap.config` (msgspec) is the decoder of record: the daemon, ``nlportmap
plan``/``list`` and the tests use it, and it authors every error message.  This
module holds what both decoders share -- the constants (one home for each
default), :class:`ConfMixin` (the derived values and caches that
:class:`~nlportmap.config.NetConf` inherits), the backend-option rules -- and
:func:`decode_fast`, the cold exec path's decoder, which needs no msgspec (~28 ms
to import with what it pulls in).

:func:`decode_fast` is a fast *acceptor*: for a clean configuration it returns a
:class:`FastConf` with exactly the values :func:`nlportmap.config.parse_config`
would produce; for anything else -- a type mismatch, a value that fails
validation, a tolerated DEL problem, nftables-style conditions -- it returns
``None`` and the caller runs :func:`~nlportmap.config.parse_config`, whose
verdict and message stand.  So both paths accept and reject the same inputs with
the same messages by construction, and ``tests/property/test_decoders_agree.py``
proves the values agree and that the fast path defers only where it must.

Standard library only, and little of it: this module is on the cold path.
"""
from __future__ import annotations

from .errors import CNIError, InvalidConfig
from .gojson import canonical_keys, fold

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence
    from typing import Any, Protocol

    from .conditions import Match

    class MappingLike(Protocol):
        """One decoded port mapping (config.PortMapping or FastMapping)."""

        hostPort: int
        containerPort: int
        protocol: str
        hostIP: str | None

    class RuntimeConfigLike(Protocol):
        @property
        def portMappings(self) -> Sequence[MappingLike]: ...

__all__ = [
    "BACKENDS",
    "CONFLICT_POLICIES",
    "DEFAULT_MARK_BIT",
    "DEFAULT_SERVICE_PROXY_INTERFACES",
    "IFNAME_MAX",
    "LEGACY_ATTACHMENTS",
    "LISTENER_POLICIES",
    "MAPPING_KEYS",
    "MAX_PORT_MAPPINGS",
    "PORT_MAX",
    "PORT_MIN",
    "PROTOCOLS",
    "TOP_KEYS",
    "VALID_ATTACHMENTS",
    "ConfMixin",
    "FastConf",
    "backend_specific_options",
    "check_backend_conflict",
    "command_prefix",
    "condition_style",
    "conflict_error",
    "decode_fast",
    "ifname_problem",
]

#: Default masquerade mark bit (upstream ``DefaultMarkBit``; Kubernetes uses 14/15, Calico 20-31).
DEFAULT_MARK_BIT = 13
#: Accepted ``backend`` values (reference §2.3).
BACKENDS = ("nftables", "iptables")
#: Accepted port-mapping protocols (CNI CONVENTIONS.md "portMappings"; reference §2.5).
PROTOCOLS = ("tcp", "udp", "sctp")
#: Accepted ``conflictPolicy`` values; ``None`` means ``"replace"``.
CONFLICT_POLICIES = ("replace", "reject")
#: Accepted ``hostPortListeners`` values; ``None`` means ``"ignore"``.
LISTENER_POLICIES = ("ignore", "reject")
#: Valid TCP/UDP/SCTP port range (host byte order).
PORT_MIN, PORT_MAX = 1, 65535
#: Most ``runtimeConfig.portMappings`` entries one ADD accepts (more: code 7).  At this
#: limit a dual-stack ADD or DEL takes well under a second and its one atomic batch stays
#: far below what the netlink socket takes (README "Limits"); DEL accepts any number.
MAX_PORT_MAPPINGS = 1024
#: Default ``serviceProxyInterfaces``: where kube-proxy (IPVS mode) and kube-router put
#: Service ClusterIPs (dummy interfaces; see nlportmap.proxyvips).
DEFAULT_SERVICE_PROXY_INTERFACES = ("kube-ipvs0", "kube-dummy-if")
#: Longest interface name in bytes: IFNAMSIZ (16, include/uapi/linux/if.h) minus the NUL.
IFNAME_MAX = 15

VALID_ATTACHMENTS = "cni.dev/valid-attachments"
#: libcni also sends the list under this historic (typo) key; used only as a fallback.
LEGACY_ATTACHMENTS = "cni.dev/attachments"

#: The JSON keys of the top-level object, in NetConf's field order (tests compare them
#: with the msgspec struct's fields).
TOP_KEYS = ("cniVersion", "name", "type", "backend", "snat", "masqAll", "markMasqBit",
            "externalSetMarkChain", "conditionsV4", "conditionsV6", "runtimeConfig", "prevResult",
            "conflictPolicy", "hostPortListeners", "runtimeListenerProcesses", "serviceProxyInterfaces",
            VALID_ATTACHMENTS,
            "capabilities", "ipam", "dns")
MAPPING_KEYS = ("hostPort", "containerPort", "protocol", "hostIP")


def command_prefix(command: str | None) -> str:
    """Message prefix: ``failed to parse config: `` for ADD and DEL (as upstream's cmdAdd/cmdDel)."""
    return "failed to parse config: " if command in ("ADD", "DEL") else ""


def condition_style(tokens: list[str] | None) -> str | None:
    """Which backend a conditions list is written for (reference §2.4).

    ``None`` for a null/empty list or an empty first token; ``"iptables"`` if
    the first token starts with ``-`` or ``!``; ``"nftables"`` otherwise.
    Only the first token is inspected, like upstream.
    """
    if not tokens or not tokens[0]:
        return None
    return "iptables" if tokens[0][0] in "-!" else "nftables"


def parse_family_conditions(tokens: list[str] | None, family: int) -> tuple[Match, ...]:
    """nftables-style conditions -> parsed matches; ``()`` for none or iptables-style."""
    if not tokens or condition_style(tokens) == "iptables":
        return ()
    from .conditions import parse_conditions
    return parse_conditions(tokens, family)


class ConfMixin:
    """Derived values of a decoded configuration (shared by ``NetConf`` and :class:`FastConf`).

    Caches live in the instance ``__dict__`` under ``_command`` (the CNI command it
    was decoded for), ``_warnings``, ``_conditions`` and ``_echo``.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        name: str
        type: str
        backend: str | None
        snat: bool
        masqAll: bool
        hostPortListeners: str | None
        runtimeListenerProcesses: list[str] | None
        runtimeConfig: RuntimeConfigLike
        markMasqBit: int | None
        conflictPolicy: str | None
        serviceProxyInterfaces: list[str] | None
        conditionsV4: list[str] | None
        conditionsV6: list[str] | None
        prevResult: dict[str, Any] | None
        cniVersion: str
        externalSetMarkChain: str | None
        __dict__: dict[str, Any]

    @property
    def mark_bit(self) -> int:
        """Effective masquerade mark bit: ``markMasqBit`` or :data:`DEFAULT_MARK_BIT`."""
        return DEFAULT_MARK_BIT if self.markMasqBit is None else self.markMasqBit

    @property
    def service_proxy_interfaces(self) -> tuple[str, ...]:
        """Effective ``serviceProxyInterfaces``: the list given, else the default."""
        if self.serviceProxyInterfaces is None:
            return DEFAULT_SERVICE_PROXY_INTERFACES
        return tuple(self.serviceProxyInterfaces)

    @property
    def conflict_policy(self) -> str:
        """Effective conflict policy: ``"replace"`` (default) or ``"reject"``."""
        return self.conflictPolicy or "replace"

    @property
    def command(self) -> str | None:
        """The CNI command this configuration was decoded for."""
        return self.__dict__.get("_command")

    @property
    def warnings(self) -> tuple[str, ...]:
        """Problems that were tolerated (DEL only, see nlportmap.config); one line each."""
        return tuple(self.__dict__.get("_warnings", ()))

    def parsed_conditions(self, family: int) -> tuple[Match, ...]:
        """``conditionsV4`` (``family=4``) or ``conditionsV6`` (6) as parsed matches.

        ``()`` for an absent/empty list and for an iptables-style list (first
        token starts with ``-`` or ``!``, reference §2.4).  Parsed once and
        cached.  Raises :class:`~nlportmap.errors.InvalidConfig` if the list
        is invalid (only reachable for configs parsed for DEL).
        """
        cache = self.__dict__.setdefault("_conditions", {})
        if family not in cache:
            try:
                cache[family] = parse_family_conditions(
                    self.conditionsV4 if family == 4 else self.conditionsV6, family)
            except InvalidConfig as err:
                cache[family] = err
        found: tuple[Match, ...] | CNIError = cache[family]
        if isinstance(found, CNIError):
            raise found
        return found

    def echo_result(self) -> dict[str, Any] | None:
        """The prevResult to print on ADD (``None`` without prevResult): the received
        object with ``cniVersion`` set to this config's version, validated by
        :func:`nlportmap.result.decode_prev_result` (cached).  Raises DecodeFailure."""
        if self.prevResult is None:
            return None
        echo = self.__dict__.get("_echo")
        if echo is None:
            from .result import decode_prev_result
            echo = decode_prev_result(self.prevResult, self.cniVersion)
            self.__dict__["_echo"] = echo
        return echo

    def container_ips(self, ifname: str) -> dict[int, str | None]:
        """``{4: cidr | None, 6: cidr | None}`` chosen from prevResult for ``ifname`` (reference §2.7)."""
        echo = self.echo_result()
        if echo is None:
            return {4: None, 6: None}
        from .result import container_ips
        return container_ips(echo, ifname)


def ifname_problem(i: int, name: str) -> str | None:
    """Why ``serviceProxyInterfaces[i]`` cannot be a Linux interface name (the kernel's
    ``dev_valid_name``: 1-15 bytes, not ``.``/``..``, no ``/``, ``:``, whitespace or NUL)."""
    where = f"serviceProxyInterfaces[{i}]"
    if not name or name in (".", ".."):
        return f'{where}: invalid interface name "{name}"'
    if len(name.encode()) > IFNAME_MAX:
        return f'{where}: interface name "{name}" is longer than {IFNAME_MAX} bytes'
    if any(c in "/:\0" or c.isspace() for c in name):
        return (f"{where}: invalid interface name {name!r} "
                f"(no '/', ':', whitespace or NUL)")
    return None


def backend_specific_options(conf: Any) -> dict[str, list[str]]:
    """``{"iptables": [...keys], "nftables": [...keys]}`` in upstream's collection order (§2.3).

    ``externalSetMarkChain`` (present, even ``""``) is iptables-specific; each
    conditions list is specific to the backend :func:`condition_style` names.
    """
    found: dict[str, list[str]] = {"iptables": [], "nftables": []}
    if conf.externalSetMarkChain is not None:
        found["iptables"].append("externalSetMarkChain")
    for key, tokens in (("conditionsV4", conf.conditionsV4), ("conditionsV6", conf.conditionsV6)):
        style = condition_style(tokens)
        if style:
            found[style].append(key)
    return found


def conflict_error(conf: Any, chosen: str, prefix: str) -> None:
    """Raise upstream's "<chosen> backend was requested but configuration contains
    <other>-specific options [...]" (code 7) when ``conf`` has options of the other backend."""
    opts = backend_specific_options(conf)
    other = "nftables" if chosen == "iptables" else "iptables"
    if opts[other]:
        raise InvalidConfig(f"{prefix}{chosen} backend was requested "
                            f"but configuration contains {other}-specific options "
                            f"[{' '.join(opts[other])}]")


def check_backend_conflict(conf: Any, chosen: str) -> None:
    """Reject options meant for the other backend once the backend is known (reference §2.3).

    ``chosen``: the requested or auto-detected backend (an unknown string counts
    as "not iptables", like upstream).  If ``chosen`` is ``"nftables"`` the
    nftables-style conditions are also required to be valid (they already are,
    except for DEL, where this stays lenient).  Raises InvalidConfig with
    upstream's exact text after the command prefix.
    """
    command = conf.__dict__.get("_command")
    conflict_error(conf, chosen, command_prefix(command))
    if chosen == "nftables" and command != "DEL":
        conf.parsed_conditions(4)
        conf.parsed_conditions(6)


# --------------------------------------------------------------- the cold decoder
class FastMapping:
    """One port mapping as :func:`decode_fast` produces it (fields of config.PortMapping)."""

    __slots__ = ("containerPort", "hostIP", "hostPort", "protocol")

    def __init__(self, hostPort: int, containerPort: int, protocol: str, hostIP: str | None) -> None:
        self.hostPort = hostPort
        self.containerPort = containerPort
        self.protocol = protocol
        self.hostIP = hostIP


class FastRuntimeConfig:
    __slots__ = ("portMappings",)

    def __init__(self, portMappings: list[FastMapping]) -> None:
        self.portMappings = portMappings


class FastConf(ConfMixin):
    """A configuration decoded by :func:`decode_fast`: the attributes of ``config.NetConf``
    that requests use (``ipam``/``dns``/``capabilities``/``valid_attachments`` are checked
    for shape but GC and STATUS, which need them, always take the msgspec path)."""

    __slots__ = (
        "__dict__",
        "backend",
        "cniVersion",
        "conditionsV4",
        "conditionsV6",
        "conflictPolicy",
        "externalSetMarkChain",
        "hostPortListeners",
        "markMasqBit",
        "masqAll",
        "name",
        "prevResult",
        "runtimeConfig",
        "runtimeListenerProcesses",
        "serviceProxyInterfaces",
        "snat",
        "type",
        "valid_attachments",
    )

    if TYPE_CHECKING:
        #: always None here: GC, its one reader, takes the msgspec path (config.NetConf)
        valid_attachments: None


class _Defer(Exception):
    pass


_TOP_NAMES = (*TOP_KEYS, LEGACY_ATTACHMENTS)
_PORTMAPPINGS = fold("portMappings")


def _str(v: object) -> str:
    if type(v) is not str:
        raise _Defer
    return v


def _int(v: object) -> int:
    if type(v) is not int:
        raise _Defer
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise _Defer
    return v


def _str_list(v: object) -> list[str]:
    if type(v) is not list or not all(type(x) is str for x in v):
        raise _Defer  # (a null item would become "" in Go: left to the decoder of record)
    return v


def _plain_obj(v: object, keys: tuple[str, ...], lists: tuple[str, ...] = ()) -> None:
    """Shape check of an object whose values we do not keep (ipam, dns)."""
    if type(v) is not dict:
        raise _Defer
    for key, value in canonical_keys(v, keys).items():
        if key in lists:
            _str_list(value)
        else:
            _str(value)


def decode_fast(obj: object, command: str) -> FastConf | None:
    """The decoded, validated configuration of stdin's JSON ``obj`` for ``command``, or
    ``None`` when the decoder of record must decide (see module docstring).

    Only ADD, DEL and CHECK are decoded here.  Never raises for bad input.
    """
    if command not in ("ADD", "DEL", "CHECK") or type(obj) is not dict:
        return None
    try:
        return _decode(obj, command)
    except _Defer:
        return None
    except CNIError:  # prevResult or address validation said no: let msgspec's path say it
        return None
    except (ValueError, TypeError, RecursionError):
        return None


_SIMPLE = {"cniVersion": _str, "name": _str, "type": _str, "backend": _str, "snat": _bool,
           "masqAll": _bool, "markMasqBit": _int, "externalSetMarkChain": _str, "conflictPolicy": _str,
           "hostPortListeners": _str, "conditionsV4": _str_list, "conditionsV6": _str_list,
           "runtimeListenerProcesses": _str_list, "serviceProxyInterfaces": _str_list}


def _decode(obj: dict[str, Any], command: str) -> FastConf:
    top = canonical_keys(obj, _TOP_NAMES)
    if LEGACY_ATTACHMENTS in top or VALID_ATTACHMENTS in top:
        raise _Defer  # GC input: not a cold-path request
    caps = top.get("capabilities")
    if caps is not None and (type(caps) is not dict or not all(type(v) is bool for v in caps.values())):
        raise _Defer
    c = FastConf()
    values: dict[str, object] = {"cniVersion": "0.1.0", "name": "", "type": "", "backend": None, "snat": True,
                                 "masqAll": False, "markMasqBit": None, "externalSetMarkChain": None,
                                 "conditionsV4": None, "conditionsV6": None, "prevResult": None,
                                 "conflictPolicy": None, "hostPortListeners": None,
                                 "runtimeListenerProcesses": None, "serviceProxyInterfaces": None,
                                 "valid_attachments": None}
    mappings: list[FastMapping] = []
    for key, value in top.items():
        check = _SIMPLE.get(key)
        if check is not None:
            values[key] = check(value)
        elif key == "runtimeConfig":
            if type(value) is not dict:
                raise _Defer
            for rk, rv in value.items():
                if rv is None or fold(rk) != _PORTMAPPINGS:
                    continue
                if type(rv) is not list or len(rv) > MAX_PORT_MAPPINGS:
                    raise _Defer  # (too many: the decoder of record refuses, or DEL drops them)
                mappings = [_mapping(m) for m in rv]  # last spelling wins, as in Go
        elif key == "prevResult":
            if type(value) is not dict:
                raise _Defer
            values[key] = value
        elif key == "ipam":
            _plain_obj(value, ("type",))
        elif key == "dns":
            _plain_obj(value, ("nameservers", "domain", "search", "options"),
                       lists=("nameservers", "search", "options"))
    for k, v in values.items():
        setattr(c, k, v)
    c.runtimeConfig = FastRuntimeConfig(mappings)
    d = c.__dict__
    d["_command"] = command
    if not c.cniVersion:
        c.cniVersion = "0.1.0"
    if c.prevResult is not None:
        c.echo_result()  # validates; a CNIError defers (the decoder of record words it)
    if c.markMasqBit is not None and c.externalSetMarkChain is not None:
        raise _Defer
    if not 0 <= c.mark_bit <= 31:
        raise _Defer
    if c.backend is not None:
        if c.backend not in BACKENDS:
            raise _Defer
        if backend_specific_options(c)["nftables" if c.backend == "iptables" else "iptables"]:
            raise _Defer
    for m in mappings:
        if not (PORT_MIN <= m.containerPort <= PORT_MAX and PORT_MIN <= m.hostPort <= PORT_MAX):
            raise _Defer
        proto = m.protocol.lower()
        if proto not in PROTOCOLS:
            raise _Defer
        if m.hostIP is not None:
            if "%" in m.hostIP or "/" in m.hostIP:
                raise _Defer
            from .addr import parse_ip
            parse_ip(m.hostIP)  # ValueError defers
        m.protocol = proto
    if c.conditionsV4 or c.conditionsV6 or c.externalSetMarkChain is not None:
        # nftables conditions need the conditions grammar, iptables tokens their own checks,
        # and either selects work (the grammar, iptables-restore) that dwarfs decoding.  Any
        # non-empty list, not just one with a style: parse_config parses a list whose first
        # token is "" (no style) in full, and may reject or warn about it.
        raise _Defer
    d["_conditions"] = {4: (), 6: ()}
    if c.conflictPolicy is not None and c.conflictPolicy not in CONFLICT_POLICIES:
        raise _Defer
    if c.hostPortListeners is not None and c.hostPortListeners not in LISTENER_POLICIES:
        raise _Defer
    for i, name in enumerate(c.serviceProxyInterfaces or ()):
        if ifname_problem(i, name):
            raise _Defer
    d["_warnings"] = ()
    return c


def _mapping(m: object) -> FastMapping:
    if type(m) is not dict:
        raise _Defer  # (null -> zero struct -> invalid port: the decoder of record words it)
    v = canonical_keys(m, MAPPING_KEYS)
    host_ip = v.get("hostIP")
    return FastMapping(_int(v.get("hostPort", 0)), _int(v.get("containerPort", 0)), _str(v.get("protocol", "")),
                       _str(host_ip) or None if host_ip is not None else None)
