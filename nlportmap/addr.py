"""IP address parsing for the cold path, without ``import ipaddress`` (~3 ms).

Every function here has the contract of the :mod:`ipaddress` call named in its
docstring: the same answers and the same canonical text.  The common forms are
decided with ``inet_pton``/``inet_ntop`` (libc, RFC 4291 text forms); anything
else -- a form ``inet_pton`` refuses, an IPv6 text of an IPv4-mapped or
-compatible address (rendered differently by the two) -- is handed to
:mod:`ipaddress`, so its verdict stands.  ``tests/property/test_addr.py``
compares both on generated input.

Families are the ints 4 and 6; packed addresses are network-order bytes.
"""
from __future__ import annotations

from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton

__all__ = ["canonical", "family_of", "packed", "parse_interface", "parse_ip"]

_MAPPED = bytes(10) + b"\xff\xff"


def _v6_plain(p: bytes) -> bool:
    """True when ``inet_ntop`` and ``ipaddress`` render this IPv6 address alike
    (they differ for IPv4-mapped ``::ffff:a.b.c.d`` and -compatible ``::a.b.c.d``)."""
    return p[:12] != _MAPPED and (p[:12] != bytes(12) or p[12:14] == b"\0\0")


def parse_ip(text: str) -> tuple[int, bytes]:
    """``ipaddress.ip_address(text)`` -> (version, packed).  Raises ValueError like it."""
    if "." in text and ":" not in text:
        try:
            return 4, inet_pton(AF_INET, text)
        except OSError:
            pass
    elif ":" in text and "%" not in text:
        try:
            p = inet_pton(AF_INET6, text)
            if _v6_plain(p):
                return 6, p
        except OSError:
            pass
    import ipaddress
    a = ipaddress.ip_address(text)
    return a.version, a.packed


def canonical(version: int, p: bytes) -> str:
    """``str(ipaddress.ip_address(p))`` for a packed address of ``version``."""
    if version == 4:
        return inet_ntop(AF_INET, p)
    if _v6_plain(p):
        return inet_ntop(AF_INET6, p)
    import ipaddress
    return str(ipaddress.IPv6Address(p))


def parse_interface(text: str) -> tuple[int, bytes, int]:
    """``ipaddress.ip_interface(text)`` -> (version, packed, prefix length).

    Raises ValueError where ``ip_interface`` does (a missing ``/len`` means the full
    length, as there)."""
    addr, sep, plen = text.partition("/")
    if sep and plen.isascii() and plen.isdigit() and (len(plen) == 1 or plen[0] != "0"):
        version, p = parse_ip(addr)
        n = int(plen)
        if n <= (32 if version == 4 else 128):
            return version, p, n
    import ipaddress
    iface = ipaddress.ip_interface(text)
    return iface.version, iface.ip.packed, iface.network.prefixlen


def packed(text: str) -> bytes:
    """Network-order bytes of an IP address text (ValueError if invalid)."""
    return parse_ip(text)[1]


def family_of(text: str) -> int:
    """4 or 6; an IPv4-mapped IPv6 address counts as 4 (Go's ``To4() != nil``)."""
    version, p = parse_ip(text)
    if version == 6 and p[:12] == _MAPPED:
        return 4
    return version
