"""Pure tests of the nftables layout: key/data encodings, conditions, golden bytes.

The golden messages were checked against a 6.18 kernel (accepted, and `nft list
ruleset` printed them as the layout docstring says; the hostports rule carries the
layout-4 fingerprint comment).  They pin pyroute2's
encoding so a pyroute2 upgrade or an encoder rewrite cannot silently change
what we send.
"""
import pytest

from nlportmap.conditions import Match
from nlportmap.nft import layout as L
from nlportmap.nft import netlink as N

GOLDEN_HOSTPORTS_RULE = (
    "14010000060a050ce803000000000000020000000e0001006e6c706f72746d61700000000e000200686f7374706f727473"
    "000000c000040024000100090001006d657461000000001400020008000100000000010800020000000010340001000c00"
    "01007061796c6f616400240002000800010000000009080002000000000208000300000000020800040000000002340001"
    "000b0001006c6f6f6b75700000240002000e000100686f7374706f72747300000008000200000000010800030000000001"
    "30000100080001006e6174002400020008000100000000010800020000000002080003000000000108000500000000091f"
    "00070000196e6c706f72746d61702f34206536343837366165363931320000")
GOLDEN_ELEMENT = (
    "700000000c0a05040700000000000000020000000e0001006e6c706f72746d61700000000e000200686f7374706f727473"
    "0000003c00030038000100100001000c000100060000001f900000100002000c0001000af400020050000012000600000c"
    "63312f65746830206e6574000000")


def test_hostports_rule_golden_bytes():
    ops = L.skeleton(4, ())
    rules = [o for o in ops if o[0] == N.NEWRULE and o[2]["attrs"][1][1] == "hostports"]
    # hostIP-specific map first, then the proxy_vips return, then the any-address map
    assert len(rules) == 3
    assert N.encode(rules[2], 1000).hex() == GOLDEN_HOSTPORTS_RULE


def test_element_golden_bytes():
    op = N.set_elems(True, N.NFPROTO_IPV4, L.TABLE, L.HOSTPORTS,
                     [(L.proto_port("tcp", 8080), L.forward_data("10.244.0.2", 80), "c1/eth0 net")])
    assert N.encode(op, 7).hex() == GOLDEN_ELEMENT


@pytest.mark.parametrize("fam,proto,hip,port,container,cport", [
    (4, "tcp", None, 8080, "10.244.0.2", 80),
    (4, "udp", "192.168.1.10", 5353, "10.244.0.2", 53),
    (6, "sctp", None, 65535, "fd00:244::2", 1),
    (6, "tcp", "fd00:99::1", 1, "fd00:244::5", 65535),
])
def test_key_and_data_roundtrip(fam, proto, hip, port, container, cport):
    s, k = L.forward_key(fam, proto, hip, port)
    assert s == (L.HOSTPORTS if hip is None else L.HOSTIP_HOSTPORTS)
    assert len(k) == (8 if hip is None else L.alen(fam) + 8)
    assert L.parse_forward_key(fam, s, k) == (proto, hip, port)
    d = L.forward_data(container, cport)
    assert len(d) == L.alen(fam) + 4
    assert L.parse_forward_data(fam, d) == (container, cport)


def test_masq_keys():
    assert L.masq_key(None, "10.0.0.2") == (L.MASQ_ALL, bytes([10, 0, 0, 2]))
    s, k = L.masq_key("127.0.0.1", "10.0.0.2")
    assert s == L.MASQ_PAIRS and k == bytes([127, 0, 0, 1, 10, 0, 0, 2])
    assert L.parse_masq_key(4, s, k) == ("127.0.0.1", "10.0.0.2")


@pytest.mark.parametrize("fam,net,pod", [(4, "10.42.0.0/24", "10.42.0.5"), (4, "10.42.0.5/32", "10.42.0.5"),
                                         (6, "fd00:42::/64", "fd00:42::6"), (4, "0.0.0.0/0", "10.0.0.1")])
def test_masq_net_keys_are_ranges_holding_the_pod_point(fam, net, pod):
    import ipaddress
    s, (start, end) = L.masq_key(net, pod)
    n = ipaddress.ip_network(net)
    p = ipaddress.ip_address(pod).packed
    assert s == L.MASQ_NETS and start == n.network_address.packed + p and end == n.broadcast_address.packed + p
    assert start <= L.masq_net_point(pod) <= end  # DEL finds it from the pod IP alone
    assert L.parse_masq_key(fam, s, start, end) == (net, pod)


def test_masq_nets_set_is_a_concatenated_interval_set():
    op = next(o for o in L.skeleton(4, ()) if o[0] == N.NEWSET and L.MASQ_NETS in o[2].names)
    a = N.attrs(op[2].body, 4)
    assert int.from_bytes(a[3], "big") == N.NFT_SET_INTERVAL | N.NFT_SET_CONCAT
    assert int.from_bytes(a[5], "big") == 8
    desc = N.attr_list(N.attrs(a[N.NFTA_SET_DESC])[N.NFTA_SET_DESC_CONCAT])
    assert [(t, N.attrs(v)[1]) for t, v in desc] == [(1, b"\0\0\0\4"), (1, b"\0\0\0\4")]
    assert L.expected_rules(4, ())["postrouting"] == 3


def test_conditions_compile_to_alternatives():
    eq = Match("saddr", False, ("10.0.0.0/8", "192.168.0.0/16"))
    ne = Match("iifname", True, ("eth1", "eth2"))
    alts = L.compile_conditions(4, (eq, ne))
    assert len(alts) == 2                      # == {a, b}: two alternatives
    assert all(len(a) == 2 + 4 for a in alts)  # prefix match (payload+cmp) + two != name matches
    too_many = tuple(Match("saddr", False, tuple(f"10.{i}.0.0/16" for i in range(9))) for _ in range(2))
    with pytest.raises(ValueError):
        L.compile_conditions(4, too_many)


def test_fingerprint_changes_with_conditions_and_family():
    a = L.fingerprint(4, ())
    b = L.fingerprint(4, (Match("saddr", True, ("10.0.0.0/8",)),))
    assert a != b and a != L.fingerprint(6, ())
    assert a.startswith(f"nlportmap/{L.LAYOUT_VERSION} ")


def test_skeleton_has_guard_only_for_ipv4():
    names4 = [N.op_name(o) for o in L.skeleton(4, ())]
    names6 = [N.op_name(o) for o in L.skeleton(6, ())]
    assert any("localnet_guard" in n for n in names4)
    assert not any("localnet_guard" in n for n in names6)


# --------------------------------------------------------------- proxy_vips (issue 15)
def _hostports_rules(fam):
    return [o[2]["attrs"][2][1] for o in L.skeleton(fam, ()) if o[0] == N.NEWRULE
            and o[2]["attrs"][1][1] == "hostports"]


@pytest.mark.parametrize("fam", [4, 6])
def test_proxy_vips_return_sits_between_hostip_and_any_address_dnat(fam):
    names = [[e["attrs"][0][1] for e in r] for r in _hostports_rules(fam)]
    assert names == [["payload", "meta", "payload", "lookup", "nat"],  # @hostip_hostports
                     ["payload", "lookup", "immediate"],               # ip daddr @proxy_vips return
                     ["meta", "payload", "lookup", "nat"]]             # @hostports
    ret = _hostports_rules(fam)[1]
    load = dict(ret[0]["attrs"][1][1]["attrs"])
    assert (load["NFTA_PAYLOAD_OFFSET"], load["NFTA_PAYLOAD_LEN"]) == ((16, 4) if fam == 4 else (24, 16))
    assert dict(ret[1]["attrs"][1][1]["attrs"])["NFTA_LOOKUP_SET"] == L.PROXY_VIPS
    assert L.expected_rules(fam, ())["hostports"] == 3
    sets = [o for o in L.skeleton(fam, ()) if o[0] == N.NEWSET and not isinstance(o[2], N.RawMsg)]
    vips = [dict(o[2]["attrs"]) for o in sets if dict(o[2]["attrs"])["NFTA_SET_NAME"] == L.PROXY_VIPS]
    assert len(vips) == 1 and vips[0]["NFTA_SET_KEY_LEN"] == L.alen(fam)
    assert "NFTA_SET_DATA_TYPE" not in vips[0]  # a plain set, no owner comment on its elements


def test_proxy_vips_is_not_an_owner_scanned_set():
    assert L.PROXY_VIPS not in L.SETS and L.PROXY_VIPS in L.ALL_SETS


def test_proxy_vips_ops_flush_then_add():
    a, b = bytes([10, 96, 0, 1]), bytes([10, 96, 0, 2])
    ops = L.proxy_vips_ops(4, [a, b, a, bytes(16)])  # duplicates and the other family dropped
    assert [o[0] for o in ops] == [N.DELSETELEM, N.NEWSETELEM]
    flush = N.encode(ops[0], 5)
    # table and set name, and no NFTA_SET_ELEM_LIST_ELEMENTS: the kernel flushes the set
    assert [t for t, _ in N.attr_list(flush[20:])] == [1, 2]
    els = N.attr_list(N.attrs(N.encode(ops[1], 6), 20)[3])
    assert [N.attrs(N.attrs(el)[1])[1] for _, el in els] == [a, b]
    assert [o[0] for o in L.proxy_vips_ops(6, [])] == [N.DELSETELEM]  # no addresses: the flush alone
    many = L.proxy_vips_ops(6, [i.to_bytes(16, "big") for i in range(450)])
    assert [o[0] for o in many] == [N.DELSETELEM] + [N.NEWSETELEM] * 3
