"""``nlportmap.addr`` against :mod:`ipaddress` on generated address texts.

Same accept/reject (a rejection is a ``ValueError`` in both), same (version, packed,
prefix length), same canonical text -- for IPv4 and IPv6 texts in every rendering
(compressed, exploded, upper/mixed case, leading zeros, IPv4-mapped and -compatible
forms, embedded dotted quads), zones, prefixes (``/024``, netmasks, out of range) and
garbage.
"""
from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nlportmap import addr

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(fn):
    try:
        return ("ok", fn())
    except ValueError:
        return ("ValueError",)


octet = st.integers(0, 255).map(str) | st.integers(0, 255).map(lambda n: f"0{n}") \
    | st.sampled_from(("256", "999", "-1", "00", "0x1", "", " 1", "١", "1 "))
v4_texts = (st.lists(octet, min_size=4, max_size=4).map(".".join)
            | st.lists(octet, min_size=1, max_size=6).map(".".join)
            | st.integers(0, 2 ** 32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
            | st.sampled_from(("0.0.0.0", "255.255.255.255", "127.0.0.1", "1.2.3.4.", ".1.2.3.4", "1..2.3", "1.2.3.4\n")))


def _v6_renderings(n: int, draw) -> str:
    a = ipaddress.IPv6Address(n)
    groups = a.exploded.split(":")
    style = draw(st.integers(0, 7))
    if style == 0:
        return a.compressed
    if style == 1:
        return a.exploded
    if style == 2:
        return a.compressed.upper()
    if style == 3:  # leading zeros dropped, no compression
        return ":".join(g.lstrip("0") or "0" for g in groups)
    if style == 4:  # a dotted quad in the last 32 bits
        last = ipaddress.IPv4Address(int(n) & 0xFFFFFFFF)
        return ":".join(groups[:6]) + ":" + str(last)
    if style == 5:  # "::" for a single zero group or at odd places
        g = [x.lstrip("0") or "0" for x in groups]
        i = draw(st.integers(0, 7))
        if g[i] == "0":
            return ":".join(g[:i]) + "::" + ":".join(g[i + 1:])
        return ":".join(g)
    if style == 6:  # five-digit group, too many groups, trailing colon
        return draw(st.sampled_from((a.compressed + ":", "0" + a.exploded, a.exploded + ":1", a.compressed + "::")))
    return "".join(c.upper() if draw(st.booleans()) else c for c in a.compressed)


@st.composite
def v6_texts(draw) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        n = draw(st.integers(0, 2 ** 128 - 1))
    elif kind == 1:   # IPv4-mapped
        n = (0xFFFF << 32) | draw(st.integers(0, 2 ** 32 - 1))
    elif kind == 2:   # IPv4-compatible, including ::0.0.x.y
        n = draw(st.integers(0, 2 ** 32 - 1) | st.integers(0, 2 ** 16))
    elif kind == 3:   # few non-zero groups
        n = sum(draw(st.sampled_from((0, 0, 1, 0xFFFF, 0x1234))) << (16 * i) for i in range(8))
    elif kind == 4:   # ::ffff:0:a.b.c.d (SIIT) and 64:ff9b::/96
        n = draw(st.sampled_from(((0xFFFF << 48), (0x64FF9B << 96)))) | draw(st.integers(0, 2 ** 32 - 1))
    else:
        n = draw(st.sampled_from((0, 1, 2 ** 128 - 1, 0xFFFF << 32, 0xFFFF << 16, 0xFE80 << 112 | 1)))
    text = _v6_renderings(n, draw)
    if draw(st.integers(0, 6)) == 0:
        text += draw(st.sampled_from(("%eth0", "%", "%1", "%a/b", "%%")))
    return text


garbage = (st.text(alphabet="0123456789abcdefABCDEFxg:.%/ ", max_size=24)
           | st.text(max_size=12)
           | st.sampled_from(("", " ", "::", ":::", "1::2::3", "localhost", "1.2.3.4/24", "::/0", "\x00", "1.2.3.4\x00",
                              "::1\x00", "\udc80", "1.2.3.\udc80", "::ffff:1.2.3.04", "::1.2.3.4.5", "1:2:3:4:5:6:7:8:9",
                              "1:2:3:4:5:6:7::", "::1:2:3:4:5:6:7", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:1.2.3.4",
                              "fe80::1%eth0", "FE80::1%ETH0", "[::1]", "0000::", "00000::")))
ip_texts = v4_texts | v6_texts() | garbage

prefixes = st.sampled_from(("", "/", "/0", "/00", "/8", "/024", "/24", "/32", "/33", "/64", "/128", "/129", "/+24",
                            "/ 24", "/24 ", "/-1", "/1e1", "/255.255.255.0", "/0.0.0.255", "/255.0.255.0",
                            "/ffff::", "/２４", "//24", "/24/24")) | st.integers(0, 200).map(lambda n: f"/{n}")


def _ref_ip(text):
    a = ipaddress.ip_address(text)
    return a.version, a.packed


def _ref_interface(text):
    i = ipaddress.ip_interface(text)
    return i.version, i.ip.packed, i.network.prefixlen


def _ref_family(text):
    a = ipaddress.ip_address(text)
    return 4 if a.version == 6 and a.ipv4_mapped is not None else a.version


@settings(max_examples=3000, **SETTINGS)
@given(text=ip_texts)
@example(text="::ffff:1.2.3.4")
@example(text="::1.2.3.4")
@example(text="::0.0.1.2")
@example(text="1.2.3.04")
def test_parse_ip_is_ipaddress(text):
    ours = _outcome(lambda: addr.parse_ip(text))
    assert ours == _outcome(lambda: _ref_ip(text)), text
    assert _outcome(lambda: addr.packed(text)) == _outcome(lambda: _ref_ip(text)[1])
    assert _outcome(lambda: addr.family_of(text)) == _outcome(lambda: _ref_family(text))
    if ours[0] == "ok":
        version, p = ours[1]
        assert addr.canonical(version, p) == str(ipaddress.ip_address(p))


@settings(max_examples=3000, **SETTINGS)
@given(text=ip_texts, prefix=prefixes)
@example(text="10.0.0.1", prefix="/024")
@example(text="::ffff:10.0.0.1", prefix="/120")
@example(text="fe80::1%eth0", prefix="/64")
def test_parse_interface_is_ipaddress(text, prefix):
    t = text + prefix
    assert _outcome(lambda: addr.parse_interface(t)) == _outcome(lambda: _ref_interface(t)), t


@settings(max_examples=2000, **SETTINGS)
@given(p=st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16)
       | st.integers(0, 2 ** 48 - 1).map(lambda n: bytes(10) + n.to_bytes(6, "big"))
       | st.integers(0, 2 ** 32 - 1).map(lambda n: bytes(12) + n.to_bytes(4, "big")))
def test_canonical_is_ipaddress(p):
    version = 4 if len(p) == 4 else 6
    text = addr.canonical(version, p)
    assert text == str(ipaddress.ip_address(p))
    assert addr.parse_ip(text) == (version, p)
