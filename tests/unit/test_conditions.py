"""nftables-style condition parsing (nlportmap.conditions)."""
import pytest

from nlportmap.conditions import Match, parse_conditions
from nlportmap.errors import InvalidConfig


def msg_of(tokens, family):
    with pytest.raises(InvalidConfig) as exc:
        parse_conditions(tokens, family)
    assert exc.value.code == 7
    return exc.value.msg


@pytest.mark.parametrize("tokens", [None, [], [""], ["", "  "]])
def test_empty_lists_give_no_matches(tokens):
    assert parse_conditions(tokens, 4) == ()
    assert parse_conditions(tokens, 6) == ()


def test_single_address_is_canonical_network():
    assert parse_conditions(["ip", "saddr", "10.1.2.3"], 4) == (Match("saddr", False, ("10.1.2.3/32",)),)
    # host bits are cleared (strict=False), like nft does
    assert parse_conditions(["ip", "daddr", "10.1.2.3/8"], 4) == (Match("daddr", False, ("10.0.0.0/8",)),)
    assert parse_conditions(["ip6", "saddr", "fd00::1/64"], 6) == (Match("saddr", False, ("fd00::/64",)),)
    assert parse_conditions(["ip6", "daddr", "FD00::1"], 6) == (Match("daddr", False, ("fd00::1/128",)),)


def test_operators():
    assert parse_conditions(["ip", "saddr", "==", "10.0.0.0/8"], 4) == (Match("saddr", False, ("10.0.0.0/8",)),)
    assert parse_conditions(["ip", "saddr", "!=", "10.0.0.0/8"], 4) == (Match("saddr", True, ("10.0.0.0/8",)),)
    # operator glued to its neighbours
    assert parse_conditions(["ip saddr!=10.0.0.0/8"], 4) == (Match("saddr", True, ("10.0.0.0/8",)),)


@pytest.mark.parametrize("tokens", [
    ["ip", "saddr", "{10.0.0.1,10.0.0.2}"],
    ["ip", "saddr", "{", "10.0.0.1,", "10.0.0.2", "}"],
    ["ip", "saddr", "{ 10.0.0.1, 10.0.0.2 }"],
    ["ip saddr { 10.0.0.1 , 10.0.0.2 , }"],
    ["ip", "saddr", "{", "10.0.0.1", ",", "10.0.0.2", ",", "10.0.0.1", "}"],  # duplicate dropped
])
def test_anonymous_set_spellings(tokens):
    assert parse_conditions(tokens, 4) == (Match("saddr", False, ("10.0.0.1/32", "10.0.0.2/32")),)


def test_interface_names_quoted_bare_meta_and_wildcard():
    got = parse_conditions(["iifname", '"eth0"', "meta", "oifname", "!=", "veth*",
                            "iifname", "{", '"a"', ",", "b", "}"], 4)
    assert got == (
        Match("iifname", False, ("eth0",)),
        Match("oifname", True, ("veth*",)),
        Match("iifname", False, ("a", "b")),
    )


def test_sequence_is_kept_in_order():
    got = parse_conditions(["ip", "saddr", "!=", "{ 10.0.0.0/8, 192.168.0.1 }", "ip", "daddr", "1.2.3.4",
                            "iifname", "eth0"], 4)
    assert [str(m) for m in got] == [
        "ip saddr != { 10.0.0.0/8, 192.168.0.1/32 }",
        "ip daddr 1.2.3.4/32",
        'iifname "eth0"',
    ]


def test_str_and_family():
    m = Match("daddr", True, ("fd00::/64",))
    assert str(m) == "ip6 daddr != fd00::/64"
    assert m.family == 6
    assert Match("saddr", False, ("10.0.0.0/8",)).family == 4
    assert Match("iifname", False, ("eth0", "eth1")).family is None
    assert str(Match("iifname", False, ("eth0", "eth1"))) == 'iifname { "eth0", "eth1" }'


def test_unsupported_keyword_names_token_and_field():
    assert msg_of(["tcp", "dport", "80"], 4) == (
        'conditionsV4: unsupported token "tcp" (supported: ip saddr/daddr, iifname, oifname '
        'with == or !=, anonymous sets)')
    assert msg_of(["ip6", "nexthdr", "tcp"], 6) == (
        'conditionsV6: unsupported token "nexthdr" (supported: ip6 saddr/daddr, iifname, oifname '
        'with == or !=, anonymous sets)')
    assert 'unsupported token "iif"' in msg_of(["meta", "iif", "1"], 4)
    # the upstream test's placeholder tokens are not nft syntax and are rejected by us
    assert msg_of(["aaa", "bbbb"], 4).startswith('conditionsV4: unsupported token "aaa"')


def test_family_keyword_in_wrong_list():
    assert msg_of(["ip", "saddr", "10.0.0.1"], 6) == (
        'conditionsV6: "ip" matches IPv4 packets and is not allowed here '
        '(use "ip6" in conditionsV6, "ip" in conditionsV4)')
    assert msg_of(["ip6", "saddr", "fd00::1"], 4).startswith('conditionsV4: "ip6" matches IPv6 packets')


@pytest.mark.parametrize("tokens,family,expected", [
    (["ip", "saddr", "10.0.0.300"], 4, 'conditionsV4: invalid IPv4 address or prefix "10.0.0.300" after "ip saddr"'),
    (["ip", "saddr", "10.0.0.0/33"], 4, 'conditionsV4: invalid IPv4 address or prefix "10.0.0.0/33" after "ip saddr"'),
    (["ip", "saddr", "10.0.0.1-10.0.0.5"], 4, 'conditionsV4: invalid IPv4 address or prefix "10.0.0.1-10.0.0.5" after "ip saddr"'),
    (["ip", "saddr", "10.0.0.0/255.0.0.0"], 4, 'conditionsV4: invalid IPv4 address or prefix "10.0.0.0/255.0.0.0" after "ip saddr"'),
    (["ip6", "daddr", "!=", "fe80::1%eth0"], 6, 'conditionsV6: invalid IPv6 address or prefix "fe80::1%eth0" after "ip6 daddr !="'),
    (["ip", "saddr", "fd00::1"], 4, 'conditionsV4: "fd00::1" after "ip saddr" is an IPv6 address; conditionsV4 needs IPv4'),
    (["ip6", "saddr", "10.0.0.1"], 6, 'conditionsV6: "10.0.0.1" after "ip6 saddr" is an IPv4 address; conditionsV6 needs IPv6'),
])
def test_bad_addresses(tokens, family, expected):
    assert msg_of(tokens, family) == expected


@pytest.mark.parametrize("tokens,expected", [
    (["ip", "saddr"], 'conditionsV4: missing value after "ip saddr"'),
    (["ip"], 'conditionsV4: missing value after "ip"'),
    (["ip", "saddr", "{", "}"], 'conditionsV4: empty set after "ip saddr"'),
    (["ip", "saddr", "{", "10.0.0.1"], 'conditionsV4: expected "," or "}" after "10.0.0.1" in set after "ip saddr", got end of conditions'),
    (["ip", "saddr", "{", "10.0.0.1", "10.0.0.2", "}"], 'conditionsV4: expected "," or "}" after "10.0.0.1" in set after "ip saddr", got "10.0.0.2"'),
    (["ip", "saddr", "{"], 'conditionsV4: unterminated set after "ip saddr" (missing "}")'),
    (["ip", "saddr", "!=", "!="], 'conditionsV4: unexpected "!=" after "ip saddr !=" (expected a value)'),
    (["ip", "saddr", "}"], 'conditionsV4: unexpected "}" after "ip saddr" (expected a value)'),
    (["}"], 'conditionsV4: unsupported token "}" (supported: ip saddr/daddr, iifname, oifname with == or !=, anonymous sets)'),
])
def test_structure_errors(tokens, expected):
    assert msg_of(tokens, 4) == expected


@pytest.mark.parametrize("name,problem", [
    ('""', 'interface name "" after "iifname" is empty'),
    ('"*"', 'interface name "*" after "iifname" has nothing before the wildcard'),
    ("abcdefghijklmnop", 'interface name "abcdefghijklmnop" after "iifname" is longer than 15 bytes'),
    ("e*th", 'interface name "e*th" after "iifname" has "*" other than as the last character'),
    ("..", 'interface name ".." after "iifname" is "." or ".."'),
    ('"a b"', 'interface name "a b" after "iifname" contains /, :, a quote, a backslash or whitespace'),
    ("eth0:1", 'interface name "eth0:1" after "iifname" contains /, :, a quote, a backslash or whitespace'),
])
def test_bad_interface_names(name, problem):
    assert msg_of(["iifname", name], 4) == f"conditionsV4: {problem}"


def test_interface_name_limits():
    assert parse_conditions(["oifname", "abcdefghijklmno"], 4)[0].values == ("abcdefghijklmno",)
    assert parse_conditions(["oifname", "abcdefghijklmno*"], 4)[0].values == ("abcdefghijklmno*",)
    assert msg_of(["iifname", '"eth0'], 4) == 'conditionsV4: unterminated quoted name "eth0 after "iifname"'
    assert parse_conditions(["iifname", "{", "a*", ",", "b", "}"], 4) == (Match("iifname", False, ("a*", "b")),)


def test_bad_family_argument():
    with pytest.raises(ValueError):
        parse_conditions(["ip", "saddr", "10.0.0.1"], 5)
