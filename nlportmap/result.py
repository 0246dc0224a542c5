"""prevResult validation, pass-through and container IP selection.

Protocol background (reference portmap-behaviour.md §1.8, CNI spec 1.1.0
"Section 5: Result Types"): a chained plugin receives the previous plugin's
result as ``prevResult``, must decode it according to the **config's**
``cniVersion`` and must print it (possibly modified) as its own ADD result in
that version.  Result shapes come in three families:

``0.2.x`` (versions ``""``, ``0.1.0``, ``0.2.0``)
    ``ip4``/``ip6`` objects (``ip``, ``gateway``, ``routes``), ``dns``
``0.4.x`` (versions ``0.3.0``, ``0.3.1``, ``0.4.0``)
    ``interfaces[]``, ``ips[]`` (``version``, ``interface``, ``address``, ``gateway``), ``routes[]``, ``dns``
``1.x`` (versions ``1.0.0``, ``1.1.0``)
    like 0.4.x without ``ips[].version``; extra interface/route fields

Like Go's ``version.ParsePrevResult`` a prevResult without a version is taken
to be in the config's version; one with a version of another family is
rejected with upstream's text (``result type supports [1.0.0 1.1.0] but
unmarshalled CNIVersion is "0.4.0"``).  Addresses must be valid CIDRs
(``a.b.c.d/len``; no netmask form, no zone) and gateways valid IPs, as Go's
``net.ParseCIDR``/``net.ParseIP`` require.  Keys are matched
case-insensitively (Go ``encoding/json``).

All errors are :class:`nlportmap.errors.DecodeFailure` (code 6) with a message
starting ``could not parse prevResult: `` (upstream uses code 999 for these;
we use the spec's "failed to decode content" code).
"""
from __future__ import annotations

from . import addr
from .errors import DecodeFailure
from .gojson import ci_get, fold, json_type

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator
    from typing import Any, TypeAlias

    #: a decoded JSON object (values are whatever JSON held: checked where used)
    JSONObject: TypeAlias = dict[str, Any]

__all__ = ["RESULT_FAMILIES", "container_ips", "decode_prev_result", "result_family"]

#: family name -> the ``cniVersion`` strings its result type accepts, in
#: upstream's order (``pkg/types/020``, ``040``, ``100`` ``SupportedVersions``).
RESULT_FAMILIES: dict[str, tuple[str, ...]] = {
    "0.2.x": ("", "0.1.0", "0.2.0"),
    "0.4.x": ("0.3.0", "0.3.1", "0.4.0"),
    "1.x": ("1.0.0", "1.1.0"),
}

_PREFIX = "could not parse prevResult: "


def result_family(cni_version: str) -> str | None:
    """``'0.2.x'``, ``'0.4.x'`` or ``'1.x'`` for a result ``cniVersion`` string, ``None`` if unknown."""
    for fam, versions in RESULT_FAMILIES.items():
        if cni_version in versions:
            return fam
    return None


def _fail(msg: str) -> DecodeFailure:
    return DecodeFailure(_PREFIX + msg)


def _show(value: Any) -> str:
    from .jsonio import dumps
    try:
        text = dumps(value, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is int)
    if not ok:
        raise _fail(f"{where}: expected {what}, got {json_type(value)} {_show(value)}")
    return value


def _parse_ip(text: str) -> tuple[int, bytes]:
    """Go ``net.ParseIP`` semantics: dotted quad or IPv6 text, no zone, no prefix -> (version, packed)."""
    if "%" in text or "/" in text:
        raise ValueError(text)
    return addr.parse_ip(text)


def _parse_cidr(text: str) -> tuple[int, bytes, int]:
    """Go ``net.ParseCIDR`` semantics: ``addr/len`` with a decimal length; host bits kept
    -> (version, packed, prefix length)."""
    a, sep, plen = text.partition("/")
    if not sep or not plen.isascii() or not plen.isdigit() or "%" in a:
        raise ValueError(text)
    return addr.parse_interface(text)


def _check_cidr(obj: JSONObject, key: str, where: str) -> None:
    value = ci_get(obj, key)
    if value is None:
        return
    _expect(value, str, f"{where}.{key}", "a CIDR string")
    try:
        _parse_cidr(value)
    except ValueError:
        raise _fail(f"{where}.{key}: invalid CIDR address: {value}") from None


def _check_ip(obj: JSONObject, key: str, where: str) -> None:
    value = ci_get(obj, key)
    if value is None:
        return
    _expect(value, str, f"{where}.{key}", "an IP address string")
    if value == "":  # Go: an empty net.IP is allowed
        return
    try:
        _parse_ip(value)
    except ValueError:
        raise _fail(f"{where}.{key}: invalid IP address: {value}") from None


def _check_fields(obj: JSONObject, where: str, strings: tuple[str, ...] = (), ints: tuple[str, ...] = (),
                  string_lists: tuple[str, ...] = ()) -> None:
    for key in strings:
        value = ci_get(obj, key)
        if value is not None:
            _expect(value, str, f"{where}.{key}", "a string")
    for key in ints:
        value = ci_get(obj, key)
        if value is not None:
            _expect(value, int, f"{where}.{key}", "an integer")
    for key in string_lists:
        value = ci_get(obj, key)
        if value is not None:
            _expect(value, list, f"{where}.{key}", "an array of strings")
            for i, item in enumerate(value):
                if item is not None:
                    _expect(item, str, f"{where}.{key}[{i}]", "a string")


def _objects(value: Any, where: str) -> Iterator[tuple[int, JSONObject]]:
    """Yield ``(index, dict)`` for a JSON array of objects (nulls skipped, as Go leaves them nil)."""
    if value is None:
        return
    _expect(value, list, where, "an array")
    for i, item in enumerate(value):
        if item is None:
            continue
        yield i, _expect(item, dict, f"{where}[{i}]", "an object")


def _check_routes(value: Any, where: str, v1: bool) -> None:
    for i, route in _objects(value, where):
        w = f"{where}[{i}]"
        _check_cidr(route, "dst", w)
        _check_ip(route, "gw", w)
        if v1:
            _check_fields(route, w, ints=("mtu", "advmss", "priority", "table", "scope"))


def _check_dns(obj: JSONObject) -> None:
    dns = ci_get(obj, "dns")
    if dns is None:
        return
    _expect(dns, dict, "dns", "an object")
    _check_fields(dns, "dns", strings=("domain",), string_lists=("nameservers", "search", "options"))


def _check_shape(prev: JSONObject, family: str) -> None:
    if family == "0.2.x":
        for key in ("ip4", "ip6"):
            ipc = ci_get(prev, key)
            if ipc is None:
                continue
            _expect(ipc, dict, key, "an object")
            _check_cidr(ipc, "ip", key)
            _check_ip(ipc, "gateway", key)
            _check_routes(ci_get(ipc, "routes"), f"{key}.routes", v1=False)
    else:
        v1 = family == "1.x"
        for i, iface in _objects(ci_get(prev, "interfaces"), "interfaces"):
            _check_fields(iface, f"interfaces[{i}]",
                          strings=("name", "mac", "sandbox") + (("socketPath", "pciID") if v1 else ()),
                          ints=("mtu",) if v1 else ())
        for i, ipc in _objects(ci_get(prev, "ips"), "ips"):
            w = f"ips[{i}]"
            _check_fields(ipc, w, ints=("interface",), strings=() if v1 else ("version",))
            _check_cidr(ipc, "address", w)
            _check_ip(ipc, "gateway", w)
        _check_routes(ci_get(prev, "routes"), "routes", v1=v1)
    _check_dns(prev)


def _declared_version(prev: JSONObject, cni_version: str) -> str:
    """The version Go's decoder ends up with for ``prev`` (see module docstring).

    Go (``version.ParsePrevResult``) injects ``"CNIVersion": <config version>``
    unless that exact key holds a non-empty value, marshals the map (keys
    sorted) and decodes it; every key folding to ``cniversion`` is assigned in
    that sorted order, so ``"cniVersion"`` (lower-case c sorts last) beats the
    injected ``"CNIVersion"``.
    """
    raw = dict(prev)
    if "CNIVersion" not in raw or raw["CNIVersion"] == "":
        raw["CNIVersion"] = cni_version
    version = ""
    for key in sorted(k for k in raw if fold(k) == "cniversion"):
        value = raw[key]
        if value is None:
            continue
        _expect(value, str, "cniVersion", "a string")
        version = value
    return version


def decode_prev_result(prev: JSONObject, cni_version: str) -> JSONObject:
    """Validate ``prev`` for the config version ``cni_version`` and return the object to echo on ADD.

    ``prev``: the decoded JSON object from the config's ``prevResult``.
    ``cni_version``: the config's ``cniVersion`` (``""`` means ``0.1.0``).
    Returns a new dict: ``prev``'s members (nested values shared, not copied)
    with any spelling of ``cniVersion`` replaced by ``"cniVersion":
    cni_version`` as the first key -- the "echo the received object with the
    version forced" pass-through that reference §1.8 allows.

    Raises :class:`~nlportmap.errors.DecodeFailure` (code 6),
    ``could not parse prevResult: ...``: unknown config version family, a
    prevResult version of another family, wrong JSON types, invalid CIDRs or
    IP addresses.
    """
    if not isinstance(prev, dict):
        raise _fail(f"expected an object, got {json_type(prev)}")
    version = cni_version or "0.1.0"
    family = result_family(version)
    if family is None:
        raise _fail(f'unsupported CNI result version "{version}"')
    declared = _declared_version(prev, version)
    accepted = RESULT_FAMILIES[family]
    if declared not in accepted:
        raise _fail(f"result type supports [{' '.join(accepted)}] "
                    f'but unmarshalled CNIVersion is "{declared}"')
    _check_shape(prev, family)
    out: JSONObject = {"cniVersion": version}
    for key, value in prev.items():
        if fold(key) != "cniversion":
            out[key] = value
    return out


def _family_of_shape(prev: JSONObject) -> str:
    version = ci_get(prev, "cniVersion")
    fam = result_family(version) if isinstance(version, str) else None
    if fam:
        return fam
    if ci_get(prev, "ips") is None and (ci_get(prev, "ip4") is not None or ci_get(prev, "ip6") is not None):
        return "0.2.x"
    return "1.x"


def _as_interface_string(text: str, where: str) -> tuple[int, str]:
    try:
        version, packed, plen = _parse_cidr(text)
    except ValueError:
        raise _fail(f"{where}: invalid CIDR address: {text}") from None
    if version == 6 and packed[:12] == bytes(10) + b"\xff\xff":
        # Go treats an IPv4-mapped address as IPv4 (To4() != nil); express it
        # in IPv4 form with the prefix shortened by the 96 mapping bits.
        return 4, f"{addr.canonical(4, packed[12:])}/{max(plen - 96, 0)}"
    return version, f"{addr.canonical(version, packed)}/{plen}"


def container_ips(prev: JSONObject, ifname: str) -> dict[int, str | None]:
    """Pick the container's IPv4 and IPv6 address from a (decoded) prevResult.

    Returns ``{4: "10.0.0.2/24" | None, 6: "2001:db8:1::2/64" | None}``:
    interface form with prefix length and host bits kept (canonical text).
    Selection follows reference §2.7 / upstream ``parseConfig``: walk the
    addresses in order (0.2.x shape: ``ip4`` then ``ip6``, which carry no
    interface index); per family the first acceptable one wins; an entry is
    skipped when its ``interface`` index is within ``interfaces`` and that
    interface's ``name`` differs from ``ifname`` or its ``sandbox`` is empty;
    an absent, negative or out-of-range index is accepted; entries without an
    address are ignored.  IPv4-mapped IPv6 counts as IPv4 (rendered as IPv4,
    prefix minus 96).

    Raises :class:`~nlportmap.errors.DecodeFailure` for an unparsable address
    (only possible if ``prev`` was not passed through :func:`decode_prev_result`).
    """
    chosen: dict[int, str | None] = {4: None, 6: None}
    if not isinstance(prev, dict):
        return chosen
    if _family_of_shape(prev) == "0.2.x":
        entries = []
        for key, addr_key in (("ip4", "ip"), ("ip6", "ip")):
            ipc = ci_get(prev, key)
            if isinstance(ipc, dict):
                entries.append((ci_get(ipc, addr_key), None, f"{key}.ip"))
        interfaces: list[Any] = []
    else:
        ips = ci_get(prev, "ips")
        entries = [(ci_get(e, "address"), ci_get(e, "interface"), f"ips[{i}].address")
                   for i, e in enumerate(ips if isinstance(ips, list) else ())
                   if isinstance(e, dict)]
        found = ci_get(prev, "interfaces")
        interfaces = found if isinstance(found, list) else []
    for address, index, where in entries:
        if not isinstance(address, str) or not address:
            continue
        fam, text = _as_interface_string(address, where)
        if chosen[fam] is not None:
            continue
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if not isinstance(iface, dict):
                continue
            if ci_get(iface, "name", "") != ifname or not ci_get(iface, "sandbox", ""):
                continue
        chosen[fam] = text
    return chosen
