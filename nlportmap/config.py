"""The plugin configuration: msgspec structs and :func:`parse_config`.

The JSON keys, defaults and validation order follow upstream ``parseConfig``
(reference portmap-behaviour.md §2.1-§2.5).  Struct field names are the JSON
keys.  Go-compatible decoding details (§2.1):

* Keys of the top-level object, ``runtimeConfig``, each port mapping, ``ipam``,
  ``dns`` and each ``cni.dev/valid-attachments`` entry are matched
  case-insensitively (``"SNAT"``, ``"hostIp"`` work).  When several spellings
  of one key occur, the **last** in document order wins -- that is what Go's
  decoder does (each matching key is assigned in turn); see
  :mod:`nlportmap.gojson`.
* ``null`` means "absent" (default applies).  Unknown keys are ignored.
* Type mismatches (``"snat": "true"``, a port written ``8080.0`` or
  ``"8080"``) are errors.

Error codes -- a deliberate deviation from upstream, which reports every
portmap-level failure as code 999 (reference §1.3 step 5, §6 item 12):

* JSON syntax errors and type mismatches: :class:`~nlportmap.errors.DecodeFailure`
  (code 6, ``failed to parse network configuration: ...``); prevResult
  problems: code 6, ``could not parse prevResult: ...``.
* Everything else: :class:`~nlportmap.errors.InvalidConfig` (code 7, the
  spec's "invalid network config").  Messages keep upstream's text as a
  prefix where upstream has one (e.g. ``Invalid host port number: 0 (...)``)
  and name the field and the value.

Message prefix: for ``ADD`` and ``DEL`` every message is prefixed with
``failed to parse config: `` exactly as upstream's ``cmdAdd``/``cmdDel`` do;
for ``CHECK`` (upstream returns them bare), ``GC`` and ``STATUS`` there is no
prefix.  :func:`check_backend_conflict` uses the same rule.

Checks upstream lacks (we add them; reference §6 item 18): ports 1-65535,
``protocol`` present and one of tcp/udp/sctp (case-insensitive, stored
lower-case), ``hostIP`` a valid IP address (an empty string is stored as
``None``), nftables-style conditions within the grammar of
:mod:`nlportmap.conditions`, no quote, backslash or control character in
iptables-style condition tokens and ``externalSetMarkChain`` (nor whitespace
in the latter), ``conflictPolicy`` value, ``serviceProxyInterfaces`` entries
(Linux interface names).  On ``DEL`` these added
checks do not fail the command (upstream's DEL succeeds on such configs and a
failing DEL can wedge a runtime's teardown): the offending port mapping is
dropped, a bad conditions list is kept as a stored error that
:meth:`NetConf.parsed_conditions` raises only if someone asks for it, a bad
``conflictPolicy`` falls back to the default, and a note is added to
:attr:`NetConf.warnings`.  Upstream's own checks fail DEL as upstream does.
"""
from __future__ import annotations

from typing import Any

import msgspec

from .errors import CNIError, DecodeFailure, InvalidConfig
from .gojson import canonical_keys, json_type
from .netconf import (BACKENDS, CONFLICT_POLICIES, DEFAULT_MARK_BIT, DEFAULT_SERVICE_PROXY_INTERFACES,
                      LEGACY_ATTACHMENTS, LISTENER_POLICIES, MAX_PORT_MAPPINGS, PORT_MAX, PORT_MIN, PROTOCOLS,
                      VALID_ATTACHMENTS,
                      ConfMixin, backend_specific_options, ifname_problem,
                      check_backend_conflict, command_prefix, condition_style, conflict_error,
                      parse_family_conditions)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from .conditions import Match

__all__ = [
    "BACKENDS",
    "CONFLICT_POLICIES",
    "DEFAULT_MARK_BIT",
    "DEFAULT_SERVICE_PROXY_INTERFACES",
    "DNS",
    "IPAM",
    "PORT_MAX",
    "PORT_MIN",
    "PROTOCOLS",
    "Attachment",
    "NetConf",
    "PortMapping",
    "RuntimeConfig",
    "backend_specific_options",
    "check_backend_conflict",
    "condition_style",
    "parse_config",
]

_VALID_ATTACHMENTS = VALID_ATTACHMENTS
_LEGACY_ATTACHMENTS = LEGACY_ATTACHMENTS


class PortMapping(msgspec.Struct):
    """One ``runtimeConfig.portMappings`` entry (CNI CONVENTIONS.md, plus CRI's ``hostIP``).

    Ports are ints in 1..65535 after validation; ``protocol`` is lower-case
    ``tcp``/``udp``/``sctp`` after validation (missing is an error: upstream
    does not default it, and CRI runtimes always send it); ``hostIP`` is an
    IPv4/IPv6 address string as given, or ``None`` for "any".  Missing ports
    decode as 0 so that upstream's ``Invalid ... port number: 0`` applies.
    """

    hostPort: int = 0
    containerPort: int = 0
    protocol: str = ""
    hostIP: str | None = None


class RuntimeConfig(msgspec.Struct):
    """``runtimeConfig``: the capability arguments; portmap consumes ``portMappings`` only."""

    portMappings: list[PortMapping] = []


class Attachment(msgspec.Struct):
    """One ``cni.dev/valid-attachments`` entry (GC input, CNI spec 1.1.0 "GC")."""

    containerID: str = ""
    ifname: str = ""


class IPAM(msgspec.Struct):
    """``ipam`` as the Go base struct decodes it (type-checked, otherwise unused)."""

    type: str = ""


class DNS(msgspec.Struct):
    """``dns`` as the Go base struct decodes it (type-checked, otherwise unused)."""

    nameservers: list[str] | None = None
    domain: str = ""
    search: list[str] | None = None
    options: list[str] | None = None


class NetConf(msgspec.Struct, ConfMixin, dict=True):
    """The decoded portmap configuration (reference §2.1; field names = JSON keys).

    Build it with :func:`parse_config`, which validates it.  Defaults:
    ``cniVersion`` ``"0.1.0"`` (also for ``""``), ``snat`` ``True``,
    ``masqAll`` ``False``; ``markMasqBit`` stays ``None`` when absent (use
    :attr:`mark_bit` for the effective value); ``backend`` ``None`` means
    "auto-detect" (done elsewhere, it needs a kernel probe);
    ``conflictPolicy`` ``None`` means ``"replace"`` (:attr:`conflict_policy`).
    ``prevResult`` is the raw JSON object; :meth:`echo_result` gives the
    validated, re-versioned copy.
    """

    cniVersion: str = "0.1.0"
    name: str = ""
    type: str = ""
    backend: str | None = None
    snat: bool = True
    masqAll: bool = False
    markMasqBit: int | None = None
    externalSetMarkChain: str | None = None
    conditionsV4: list[str] | None = None
    conditionsV6: list[str] | None = None
    runtimeConfig: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    prevResult: dict[str, Any] | None = None
    conflictPolicy: str | None = None
    #: opt-in: "reject" fails ADD when a host process already listens on a mapped host port
    #: (runtime placeholder sockets excepted, see nlportmap.listeners); None/"ignore" = off
    hostPortListeners: str | None = None
    #: process names whose listening sockets are runtime placeholders (default: listeners.RUNTIME_PLACEHOLDERS)
    runtimeListenerProcesses: list[str] | None = None
    #: interfaces where a service proxy puts its virtual IPs (ClusterIPs in IPVS mode); their
    #: addresses do not count as the node's: mappings without hostIP never DNAT them.
    #: None = :data:`DEFAULT_SERVICE_PROXY_INTERFACES`; [] = no exclusion (nftables backend)
    serviceProxyInterfaces: list[str] | None = None
    #: JSON key ``cni.dev/valid-attachments`` (GC input; not a Python identifier)
    valid_attachments: list[Attachment] | None = msgspec.field(default=None, name=_VALID_ATTACHMENTS)
    capabilities: dict[str, bool] | None = None
    ipam: IPAM | None = None
    dns: DNS | None = None


_parse_family_conditions = parse_family_conditions
_prefix = command_prefix
_conflict = conflict_error


# --- decoding -------------------------------------------------------------------

_TOP_KEYS = (*(f.encode_name for f in msgspec.structs.fields(NetConf)), _LEGACY_ATTACHMENTS)
_MAPPING_KEYS = ("hostPort", "containerPort", "protocol", "hostIP")
_ATTACHMENT_KEYS = ("containerID", "ifname")
_DNS_KEYS = ("nameservers", "domain", "search", "options")


def _string_list(value: Any) -> Any:
    # Go decodes a JSON null inside a []string as "".
    if isinstance(value, list):
        return ["" if v is None else v for v in value]
    return value


def _object_list(value: Any, keys: tuple[str, ...]) -> Any:
    # Go decodes a JSON null inside a []struct as the zero struct.
    if isinstance(value, list):
        return [canonical_keys(v, keys) if isinstance(v, dict) else ({} if v is None else v)
                for v in value]
    return value


def _normalise(obj: dict[str, Any]) -> dict[str, Any]:
    """Canonical key spelling everywhere the Go structs would match keys (see module docstring)."""
    top = canonical_keys(obj, _TOP_KEYS)
    legacy = top.pop(_LEGACY_ATTACHMENTS, None)
    if _VALID_ATTACHMENTS not in top and legacy is not None:
        top[_VALID_ATTACHMENTS] = legacy
    rc = top.get("runtimeConfig")
    if isinstance(rc, dict):
        rc = canonical_keys(rc, ("portMappings",))
        if "portMappings" in rc:
            rc["portMappings"] = _object_list(rc["portMappings"], _MAPPING_KEYS)
        top["runtimeConfig"] = rc
    if _VALID_ATTACHMENTS in top:
        top[_VALID_ATTACHMENTS] = _object_list(top[_VALID_ATTACHMENTS], _ATTACHMENT_KEYS)
    for key in ("conditionsV4", "conditionsV6"):
        if key in top:
            top[key] = _string_list(top[key])
    if isinstance(top.get("ipam"), dict):
        top["ipam"] = canonical_keys(top["ipam"], ("type",))
    if isinstance(top.get("dns"), dict):
        dns = canonical_keys(top["dns"], _DNS_KEYS)
        top["dns"] = {k: _string_list(v) for k, v in dns.items()}
    caps = top.get("capabilities")
    if isinstance(caps, dict):
        top["capabilities"] = {k: (False if v is None else v) for k, v in caps.items()}
    return top


def _walk(obj: Any, path: str) -> tuple[str, Any]:
    """Resolve a msgspec error path (``$`` stripped) against ``obj``: (readable path, value)."""
    shown = ""
    rest = path
    while rest:
        if rest.startswith("[...]"):
            return shown + "[...]", _MISSING
        if rest.startswith("[") and isinstance(obj, list):
            end = rest.index("]")
            idx = int(rest[1:end])
            shown += rest[:end + 1]
            obj = obj[idx]
            rest = rest[end + 1:]
            continue
        if rest.startswith(".") and isinstance(obj, dict):
            key = next((k for k in sorted(obj, key=len, reverse=True)
                        if rest[1:].startswith(k) and rest[1 + len(k):][:1] in ("", ".", "[")), None)
            if key is None:
                break
            shown += ("." if shown else "") + key
            obj = obj[key]
            rest = rest[1 + len(key):]
            continue
        break
    if rest:
        return shown + rest, _MISSING
    return shown, obj


_MISSING = object()


def _type_error_text(err: msgspec.ValidationError, norm: dict[str, Any]) -> str:
    text = str(err)
    head, sep, tail = text.rpartition(" - at `$")
    if not sep:
        return text
    where, value = _walk(norm, tail.rstrip("`"))
    what = head.replace("`", "")
    what = what[:1].lower() + what[1:]
    shown = ""
    if value is not _MISSING:
        import json
        try:
            shown = " " + json.dumps(value)[:80]
        except (TypeError, ValueError):
            shown = ""
    return f"{where or '(top level)'}: {what}{shown}"


def _mapping_problem(i: int, pm: PortMapping) -> str | None:
    """Our added per-mapping checks; normalises ``protocol``/``hostIP`` in place when valid."""
    where = f"runtimeConfig.portMappings[{i}]"
    if pm.containerPort > PORT_MAX:
        return f"{where}.containerPort: invalid container port number {pm.containerPort} (must be 1-65535)"
    if pm.hostPort > PORT_MAX:
        return f"{where}.hostPort: invalid host port number {pm.hostPort} (must be 1-65535)"
    proto = pm.protocol.lower()
    if not pm.protocol:
        return f"{where}.protocol: missing protocol (must be one of tcp, udp, sctp)"
    if proto not in PROTOCOLS:
        return f'{where}.protocol: unsupported protocol "{pm.protocol}" (must be one of tcp, udp, sctp)'
    host_ip = pm.hostIP or None
    if host_ip is not None:
        from .addr import parse_ip
        try:
            if "%" in host_ip or "/" in host_ip:
                raise ValueError(host_ip)
            parse_ip(host_ip)
        except ValueError:
            return f'{where}.hostIP: invalid IP address "{host_ip}"'
    pm.protocol = proto
    pm.hostIP = host_ip
    return None


def _unwritable(tok: str) -> str | None:
    """Why ``tok`` cannot be an iptables token we write and later find again, or None."""
    for c in tok:
        if c == '"':
            return "a double quote"
        if c == "\\":
            return "a backslash"
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"a control character ({c!r})"
    return None


def _iptables_token_problems(conf: NetConf) -> list[str]:
    """Tokens pasted verbatim into iptables rules (iptables-style ``conditionsV4``/
    ``conditionsV6``, ``externalSetMarkChain``) must not hold quotes, backslashes or
    control characters: iptables-save prints such tokens unescaped, so the rule could
    not be read back, compared or deleted by its text (issue 12.6).  One message per
    offending field, naming it."""
    out = []
    for key, tokens in (("conditionsV4", conf.conditionsV4), ("conditionsV6", conf.conditionsV6)):
        if tokens is None or condition_style(tokens) != "iptables":
            continue
        for i, tok in enumerate(tokens):
            why = _unwritable(tok)
            if why:
                out.append(f"{key}[{i}]: token {tok!r} contains {why} (not allowed in iptables rules)")
                break
    chain = conf.externalSetMarkChain
    if chain is not None:
        why = _unwritable(chain) or ("whitespace" if any(c.isspace() for c in chain) else None)
        if why:
            out.append(f"externalSetMarkChain: chain name {chain!r} contains {why} (not allowed in iptables rules)")
    return out


def parse_config(data: bytes | str | dict[str, Any] | None, command: str) -> NetConf:
    """Decode and validate the plugin configuration from stdin (reference §2.2 order).

    ``data``: the raw stdin bytes (or text), or the already-decoded JSON
    object (``None``, JSON ``null``, decodes like ``{}``, as in Go).  ``command``: the CNI
    command (``ADD``, ``DEL``, ``CHECK``, ``GC``, ``STATUS``); it selects the message prefix and DEL leniency (see
    module docstring).

    Order (which error wins): JSON syntax and types; prevResult (§1.8);
    ``markMasqBit``/``externalSetMarkChain`` exclusivity
    (``Cannot specify externalSetMarkChain and markMasqBit``); bit range
    (``MasqMarkBit must be between 0 and 31 (markMasqBit: <n>)``); backend
    conflict (only when ``backend`` is given; otherwise the caller calls
    :func:`check_backend_conflict` after probing); backend value
    (``unrecognized backend "<x>" ...``); per mapping in order
    ``Invalid container port number: <n> (...)`` then
    ``Invalid host port number: <n> (...)``; then our added checks: per mapping
    port upper bounds, protocol, hostIP; nftables-style conditions;
    ``conflictPolicy``; ``hostPortListeners``; ``serviceProxyInterfaces``.

    Raises :class:`~nlportmap.errors.DecodeFailure` (6) or
    :class:`~nlportmap.errors.InvalidConfig` (7) as described in the module
    docstring.  The container IP choice (upstream step 9) needs ``CNI_IFNAME``
    and is :meth:`NetConf.container_ips`.
    """
    prefix = _prefix(command)
    lenient = command == "DEL"
    warnings: list[str] = []
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            obj = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError) as err:
            raise DecodeFailure(f"{prefix}failed to parse network configuration: {err}") from None
    else:
        obj = data
    if obj is None:  # Go: decoding null into a struct is a no-op
        obj = {}
    if not isinstance(obj, dict):
        raise DecodeFailure(f"{prefix}failed to parse network configuration: "
                            f"expected a JSON object, got {json_type(obj)}")
    norm = _normalise(obj)
    try:
        conf = msgspec.convert(norm, NetConf)
    except msgspec.ValidationError as err:
        raise DecodeFailure(f"{prefix}failed to parse network configuration: "
                            f"{_type_error_text(err, norm)}") from None
    except RecursionError:
        raise DecodeFailure(f"{prefix}failed to parse network configuration: nested too deeply") from None
    conf.__dict__["_command"] = command
    if not conf.cniVersion:
        conf.cniVersion = "0.1.0"

    if conf.prevResult is not None:
        try:
            conf.echo_result()
        except CNIError as err:
            raise type(err)(prefix + err.msg, err.details) from None

    if conf.markMasqBit is not None and conf.externalSetMarkChain is not None:
        raise InvalidConfig(f"{prefix}Cannot specify externalSetMarkChain and markMasqBit")
    if not 0 <= conf.mark_bit <= 31:
        raise InvalidConfig(f"{prefix}MasqMarkBit must be between 0 and 31 "
                            f"(markMasqBit: {conf.markMasqBit})")

    if conf.backend is not None:
        _conflict(conf, conf.backend, prefix)
        if conf.backend not in BACKENDS:
            raise InvalidConfig(f'{prefix}unrecognized backend "{conf.backend}" '
                                f'(backend must be "nftables" or "iptables")')

    mappings = conf.runtimeConfig.portMappings
    if len(mappings) > MAX_PORT_MAPPINGS:
        problem = (f"runtimeConfig.portMappings: {len(mappings)} mappings, more than the "
                   f"{MAX_PORT_MAPPINGS} nlportmap accepts for one attachment")
        if not lenient:
            raise InvalidConfig(prefix + problem)
        # DEL: what the attachment holds comes from its records in the kernel, not from them
        warnings.append(f"{problem}; mappings ignored for DEL")
        mappings = conf.runtimeConfig.portMappings = []
    for i, pm in enumerate(mappings):
        where = f"runtimeConfig.portMappings[{i}]"
        if pm.containerPort <= 0:
            raise InvalidConfig(f"{prefix}Invalid container port number: {pm.containerPort} "
                                f"({where}.containerPort must be 1-65535)")
        if pm.hostPort <= 0:
            raise InvalidConfig(f"{prefix}Invalid host port number: {pm.hostPort} "
                                f"({where}.hostPort must be 1-65535)")

    kept: list[PortMapping] = []
    for i, pm in enumerate(mappings):
        why = _mapping_problem(i, pm)
        if why is None:
            kept.append(pm)
        elif lenient:
            warnings.append(f"{why}; mapping ignored for DEL")
        else:
            raise InvalidConfig(prefix + why)
    conf.runtimeConfig.portMappings = kept

    for problem in _iptables_token_problems(conf):
        if not lenient:
            raise InvalidConfig(prefix + problem)
        warnings.append(f"{problem}; ignored for DEL")

    cache: dict[int, tuple[Match, ...] | InvalidConfig] = {}
    for family, tokens in ((4, conf.conditionsV4), (6, conf.conditionsV6)):
        try:
            cache[family] = _parse_family_conditions(tokens, family)
        except InvalidConfig as err:
            if not lenient:
                raise InvalidConfig(prefix + err.msg) from None
            cache[family] = InvalidConfig(prefix + err.msg)
            warnings.append(f"{err.msg}; ignored for DEL")
    conf.__dict__["_conditions"] = cache

    for field, allowed, fallback in (("conflictPolicy", CONFLICT_POLICIES, 'using "replace" for DEL'),
                                     ("hostPortListeners", LISTENER_POLICIES, "ignored for DEL")):
        value = getattr(conf, field)
        if value is not None and value not in allowed:
            problem = (f'{field}: unrecognized value "{value}" (must be '
                       + " or ".join(f'"{a}"' for a in allowed) + ")")
            if not lenient:
                raise InvalidConfig(prefix + problem)
            warnings.append(f"{problem}; {fallback}")
            setattr(conf, field, None)

    for i, name in enumerate(conf.serviceProxyInterfaces or ()):
        why = ifname_problem(i, name)
        if why is None:
            continue
        if not lenient:
            raise InvalidConfig(prefix + why)
        warnings.append(f"{why}; ignored for DEL")  # DEL does not use the list

    conf.__dict__["_warnings"] = tuple(warnings)
    return conf
