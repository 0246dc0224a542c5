"""Hostile and odd input (issue 5, item 4): every case has a defined, tested outcome.

nlportmap is exec'd in a throw-away node namespace like a runtime does it; the
state is read back over netlink (``node.elements()``/``node.listing()``) and as
``nft list ruleset``.  A rejected call must exit 1 with one CNI error object on
stdout (the right code), no traceback anywhere, and leave the ruleset untouched.
"""
from __future__ import annotations

import json

import pytest

from nlpm_helpers import netconf, port_mapping, prev_result
from soak.churn import normalise

pytestmark = pytest.mark.root

PREV = prev_result("10.244.0.5/24", "fd00:244::5/64")


def ok(node, command, conf, **kw):
    rc, out, err = node.exec(command, conf, **kw)
    assert rc == 0, (command, kw, out, err)
    assert "Traceback" not in out + err
    return out


def rejected(node, command, conf, code, **kw) -> dict:
    rc, out, err = node.exec(command, conf, **kw)
    assert rc == 1, (command, kw, out, err)
    assert "Traceback" not in out + err
    obj = json.loads(out)  # exactly one JSON object on stdout
    assert obj["code"] == code and obj["msg"], (kw, obj)
    return obj


def rows(node, **match):
    return sorted([(r["containerID"], r["ifname"], r["network"], r["family"], r["protocol"], r["hostIP"],
                    r["hostPort"], r["containerIP"], r["containerPort"], r["state"])
                   for r in node.listing() if all(r[k] == v for k, v in match.items())], key=repr)


# --------------------------------------------------------------------------- identities


ODD_IDS = ["a", "0", "A", "abc", "abc.d", "abc-", "abc_", "ABC", "x" + "." * 40, "9-._",
           "f" * 200]  # 200 = the longest ID we accept (comment must hold it intact)


def test_unusual_but_valid_container_ids_are_exact_owners(node):
    for i, cid in enumerate(ODD_IDS):
        ok(node, "ADD", netconf([port_mapping(9000 + i, 80)], prev_result(f"10.244.0.{10 + i}/24")), cid=cid)
    assert {r["containerID"]: r["hostPort"] for r in node.listing()} == {c: 9000 + i for i, c in enumerate(ODD_IDS)}
    # "abc" is a prefix of three others and equal to "ABC" but for case: DEL removes only its own
    ok(node, "DEL", netconf([port_mapping(9000 + ODD_IDS.index("abc"), 80)]), cid="abc")
    assert sorted(r["containerID"] for r in node.listing()) == sorted(c for c in ODD_IDS if c != "abc")
    for i, cid in enumerate(ODD_IDS):
        if cid != "abc":
            ok(node, "CHECK", netconf([port_mapping(9000 + i, 80)], prev_result(f"10.244.0.{10 + i}/24")), cid=cid)


BAD_IDS = [("-a", "invalid characters in containerID"), (".a", "invalid characters in containerID"),
           ("_a", "invalid characters in containerID"), ("a/b", "invalid characters in containerID"),
           ("a b", "invalid characters in containerID"), ("a\tb", "invalid characters in containerID"),
           ("\u00e4", "invalid characters in containerID"), ("a\u200bb", "invalid characters in containerID"),
           ("a:b", "invalid characters in containerID"), ("a;b", "invalid characters in containerID"),
           ("$(id)", "invalid characters in containerID"),
           ("f" * 201, "containerID is too long: 201 characters (at most 200)"),
           ("f" * 100_000, "containerID is too long: 100000 characters (at most 200)")]
BAD_IFNAMES = [("", "required env variables [CNI_IFNAME] missing"), (".", "interface name is . or .."),
               ("..", "interface name is . or .."), ("a" * 16, "interface name is too long"),
               ("\u00e9" * 8, "interface name is too long"),  # 16 bytes
               ("eth0:1", "interface name contains / or : or whitespace characters"),
               ("a/b", "interface name contains / or : or whitespace characters"),
               ("a b", "interface name contains / or : or whitespace characters"),
               ("a\u2003b", "interface name contains / or : or whitespace characters")]


def test_invalid_container_ids_and_ifnames_are_code_4_and_change_nothing(node):
    ok(node, "ADD", netconf([port_mapping(8080, 80)], PREV), cid="existing")
    before = node.ruleset()
    conf = netconf([port_mapping(8080, 80)], PREV)
    for command in ("ADD", "DEL", "CHECK"):
        for cid, msg in [*BAD_IDS, ("", "required env variables [CNI_CONTAINERID] missing")]:
            err = rejected(node, command, conf, 4, cid=cid)
            assert err["msg"] == msg, (command, cid[:20], err)
            if cid and "too long" not in msg:
                assert err["details"] == cid
        for ifname, msg in BAD_IFNAMES:
            err = rejected(node, command, conf, 4, cid="c1", ifname=ifname)
            assert err["msg"] == msg, (command, ifname, err)
    assert node.ruleset() == before


ODD_IFNAMES = ["eth0.100", "\u00e91", "x\x7f", "abcdefghijklmno", "e@1", "net-1_2"]


def test_odd_but_valid_ifnames_are_separate_attachments_of_one_container(node):
    cid = "c" * 64
    for i, ifn in enumerate(ODD_IFNAMES):
        prev = prev_result(f"10.244.0.{20 + i}/24", ifname=ifn)
        ok(node, "ADD", netconf([port_mapping(9100 + i, 80)], prev), cid=cid, ifname=ifn)
    assert {r["ifname"]: r["hostPort"] for r in node.listing()} == {f: 9100 + i for i, f in enumerate(ODD_IFNAMES)}
    ok(node, "DEL", netconf([port_mapping(9100, 80)]), cid=cid, ifname="eth0.100")
    assert sorted(r["ifname"] for r in node.listing()) == sorted(ODD_IFNAMES[1:])
    for i, ifn in enumerate(ODD_IFNAMES[1:], start=1):
        ok(node, "CHECK", netconf([port_mapping(9100 + i, 80)], prev_result(f"10.244.0.{20 + i}/24", ifname=ifn)),
           cid=cid, ifname=ifn)
    # GC keeps listed attachments by (containerID, ifname): drop just "x\x7f"
    gc = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": cid, "ifname": f} for f in ODD_IFNAMES if f != "x\x7f"]}
    ok(node, "GC", gc, cid="", ifname="", netns="")
    assert sorted(r["ifname"] for r in node.listing()) == sorted(f for f in ODD_IFNAMES[1:] if f != "x\x7f")


def test_network_names(node):
    for i, name in enumerate(["a", "0", "a.b_c-d", "Net.-_9"]):
        ok(node, "ADD", netconf([port_mapping(9200 + i, 80)], prev_result(f"10.244.0.{30 + i}/24"), name=name),
           cid=f"n{i}")
        assert [r["network"] for r in node.listing() if r["containerID"] == f"n{i}"] == [name]
    before = node.ruleset()
    for name, msg in [("", "missing network name"), ("-a", "invalid characters found in network name"),
                      ("a b", "invalid characters found in network name"),
                      ("\u00fcber", "invalid characters found in network name"),
                      ("a/b", "invalid characters found in network name")]:
        for command in ("ADD", "DEL"):
            assert rejected(node, command, netconf([port_mapping(9300, 80)], PREV, name=name), 7, cid="x")["msg"] == msg
    assert node.ruleset() == before


def test_long_network_name_add_check_del(node):
    """A 300-character network name: the owner comment is cut (the element's userdata
    has a size limit), the owner tag is intact, so CHECK and DEL work."""
    name = "n" * 300
    conf = netconf([port_mapping(9400, 80)], PREV, name=name)
    ok(node, "ADD", conf, cid="longnet")
    assert len(node.owned_by("longnet")) == 5
    net = {r["network"] for r in node.listing()}
    assert len(net) == 1 and name.startswith(net.pop())
    ok(node, "CHECK", conf, cid="longnet")
    ok(node, "DEL", conf, cid="longnet")
    assert node.owned_by("longnet") == []


def test_gc_collects_attachments_of_a_long_network_name(node):
    name = "n" * 300
    ok(node, "ADD", netconf([port_mapping(9400, 80)], PREV, name=name), cid="longnet")
    gc = {"cniVersion": "1.1.0", "name": name, "type": "portmap", "cni.dev/valid-attachments": []}
    ok(node, "GC", gc, cid="", ifname="", netns="")
    assert node.owned_by("longnet") == []


# --------------------------------------------------------------------------- mappings


def test_host_ip_of_the_other_family_is_skipped_for_that_family(node):
    # IPv6-only container, IPv4 hostIP only: nothing to install at all
    v6only = prev_result(None, "fd00:244::9/64")
    ok(node, "ADD", netconf([port_mapping(9500, 80, host_ip="10.99.0.1")], v6only), cid="v6only")
    assert node.owned_by("v6only") == [] and "nlportmap" not in node.ruleset()
    ok(node, "CHECK", netconf([port_mapping(9500, 80, host_ip="10.99.0.1")], v6only), cid="v6only")
    ok(node, "DEL", netconf([port_mapping(9500, 80, host_ip="10.99.0.1")], v6only), cid="v6only")
    # dual stack: each hostIP lands in its own family only; 0.0.0.0 / :: mean "any" in their family
    maps = [port_mapping(9501, 81, host_ip="10.99.0.1"), port_mapping(9502, 82, host_ip="fd00:99::1"),
            port_mapping(9503, 83, host_ip="::ffff:10.99.0.1"), port_mapping(9504, 84, host_ip="0.0.0.0"),
            port_mapping(9505, 85, host_ip="::"), port_mapping(9506, 86, host_ip="FD00:99:0:0::1")]
    ok(node, "ADD", netconf(maps, PREV), cid="dual")
    assert {(r[3], r[5], r[6], r[8]) for r in rows(node, containerID="dual")} == {
        (4, "10.99.0.1", 9501, 81), (6, "fd00:99::1", 9502, 82), (4, "10.99.0.1", 9503, 83),
        (4, None, 9504, 84), (6, None, 9505, 85), (6, "fd00:99::1", 9506, 86)}
    ok(node, "CHECK", netconf(maps, PREV), cid="dual")
    ok(node, "DEL", netconf(maps, PREV), cid="dual")
    assert node.owned_by("dual") == []


def test_duplicate_mappings_in_one_config_first_one_wins(node):
    maps = [port_mapping(9600, 80), port_mapping(9600, 80),           # exact duplicate
            port_mapping(9601, 81), port_mapping(9601, 82),           # same key, other target: first wins
            port_mapping(9602, 83, "tcp"), port_mapping(9602, 84, "udp"),  # other protocol: both
            {"hostPort": 9603, "containerPort": 85, "protocol": "TCP"},
            port_mapping(9603, 86, "tcp"),                            # TCP == tcp
            port_mapping(9604, 87), port_mapping(9604, 88, host_ip="0.0.0.0")]  # 0.0.0.0 == any (IPv4)
    ok(node, "ADD", netconf(maps, PREV), cid="dup")
    got = [(r[3], r[4], r[5], r[6], r[8]) for r in rows(node, containerID="dup")]
    want = []
    for fam in (4, 6):
        want += [(fam, "tcp", None, 9600, 80), (fam, "tcp", None, 9601, 81), (fam, "tcp", None, 9602, 83),
                 (fam, "udp", None, 9602, 84), (fam, "tcp", None, 9603, 85), (fam, "tcp", None, 9604, 87)]
    assert sorted(got, key=repr) == sorted(want, key=repr)
    ok(node, "CHECK", netconf(maps, PREV), cid="dup")
    ok(node, "DEL", netconf(maps, PREV), cid="dup")
    assert node.owned_by("dup") == []


def test_thousand_mappings_in_one_add(node):
    ok(node, "ADD", netconf([port_mapping(8080, 80)], prev_result("10.244.0.9/24")), cid="bystander")
    maps = [port_mapping(40000 + i, 1000 + i, ("tcp", "udp")[i % 2]) for i in range(1000)]
    conf = netconf(maps, PREV)
    ok(node, "ADD", conf, cid="big")
    got = {(r[3], r[4], r[6], r[8]) for r in rows(node, containerID="big")}
    assert got == {(fam, ("tcp", "udp")[i % 2], 40000 + i, 1000 + i) for fam in (4, 6) for i in range(1000)}
    els = normalise(node.elements())
    assert len(els[(4, "hostports")]) == 1001 and len(els[(6, "hostports")]) == 1000
    ok(node, "CHECK", conf, cid="big")
    ok(node, "ADD", conf, cid="big")  # identical re-ADD: no change
    assert {(r[3], r[4], r[6], r[8]) for r in rows(node, containerID="big")} == got
    ok(node, "DEL", conf, cid="big")
    assert node.owned_by("big") == [] and len(node.owned_by("bystander")) == 3


def test_prev_result_with_several_interfaces_and_ips_per_family(node):
    """The sandbox interface named CNI_IFNAME wins; a host-side interface with the same name
    (no sandbox) and other sandbox interfaces are skipped; first address per family."""
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "aa:00:00:00:00:01"},                       # host side, same name
                           {"name": "veth1", "mac": "aa:00:00:00:00:02"},
                           {"name": "net1", "mac": "aa:00:00:00:00:03", "sandbox": "/run/netns/p"},
                           {"name": "eth0", "mac": "aa:00:00:00:00:04", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.1.0.1/16", "interface": 0},
                    {"address": "fd00:1::1/64", "interface": 0},
                    {"address": "10.2.0.5/24", "interface": 2},
                    {"address": "fd00:2::5/64", "interface": 2},
                    {"address": "10.244.0.7/24", "interface": 3},
                    {"address": "10.244.0.8/24", "interface": 3},
                    {"address": "fd00:244::7/64", "interface": 3},
                    {"address": "fd00:244::8/64", "interface": 3}]}
    m = [port_mapping(9700, 80)]
    out = json.loads(ok(node, "ADD", netconf(m, prev), cid="multi", ifname="eth0"))
    assert out["ips"] == prev["ips"] and out["interfaces"] == prev["interfaces"]  # echoed unchanged
    assert {(r[3], r[7]) for r in rows(node, containerID="multi")} == {(4, "10.244.0.7"), (6, "fd00:244::7")}
    ok(node, "ADD", netconf([port_mapping(9701, 80)], prev), cid="multi", ifname="net1")
    assert {(r[1], r[3], r[7]) for r in rows(node, containerID="multi")} == {
        ("eth0", 4, "10.244.0.7"), ("eth0", 6, "fd00:244::7"), ("net1", 4, "10.2.0.5"), ("net1", 6, "fd00:2::5")}
    els = normalise(node.elements())
    masq = {e[0] for e in els[(4, "masq_pairs")] | els[(4, "masq_nets")]}
    # 127.0.0.1 . pod, and the first address of the pod's subnet . pod (a range up to .255)
    assert masq == {"0af400000af40007", "7f0000010af40007", "0a0200000a020005", "7f0000010a020005"}
    # an interface that does not exist in the sandbox list: nothing to forward
    ok(node, "ADD", netconf([port_mapping(9702, 80)], prev), cid="multi", ifname="eth9")
    assert rows(node, containerID="multi", ifname="eth9") == []
    ok(node, "DEL", netconf([port_mapping(9700, 80)], prev), cid="multi", ifname="eth0")
    assert {r[1] for r in rows(node, containerID="multi")} == {"net1"}


def test_address_without_interface_index_is_accepted_like_upstream(node):
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.244.0.50/24"}, {"address": "10.244.0.51/24", "interface": 0}]}
    ok(node, "ADD", netconf([port_mapping(9710, 80)], prev), cid="noidx")
    assert {r[7] for r in rows(node, containerID="noidx")} == {"10.244.0.50"}


def test_no_port_mappings_and_no_ips_are_no_ops(node):
    ok(node, "ADD", netconf([], PREV), cid="none")
    ok(node, "ADD", netconf([port_mapping(9720, 80)], prev_result(None, None)), cid="noips")
    assert "nlportmap" not in node.ruleset()
    ok(node, "CHECK", netconf([], PREV), cid="none")
    ok(node, "DEL", netconf([], PREV), cid="none")
    ok(node, "DEL", {"cniVersion": "1.0.0", "name": "nlpm-test", "type": "portmap"}, cid="noips")


# --------------------------------------------------------------------------- netns and state


def test_del_when_the_netns_no_longer_exists(node):
    pod = node.t.add_netns("pod")
    path = pod.path
    conf = netconf([port_mapping(9800, 80)], PREV)
    ok(node, "ADD", conf, cid="gone", netns=path)
    pod.delete()
    assert not pod.exists()
    ok(node, "DEL", conf, cid="gone", netns=path)
    assert node.owned_by("gone") == []
    ok(node, "ADD", conf, cid="gone2", netns="/run/netns/nlpm-never-existed")
    ok(node, "DEL", conf, cid="gone2", netns="")  # CNI_NETNS is optional for DEL
    assert node.owned_by("gone2") == []


def test_cni_netns_equal_to_the_plugins_own_is_code_8_before_any_work(node):
    conf = netconf([port_mapping(9810, 80)], PREV)
    ok(node, "ADD", conf, cid="keep")
    before = node.ruleset()
    for command in ("ADD", "DEL", "CHECK"):
        err = rejected(node, command, conf, 8, cid="keep", netns=node.host.path)
        assert err["msg"] == "plugin's netns and netns from CNI_NETNS should not be the same"
    assert node.ruleset() == before
    ok(node, "DEL", conf, cid="keep", netns=node.host.path, env={"CNI_NETNS_OVERRIDE": "true"})
    assert node.owned_by("keep") == []


def test_del_without_prev_result_leaves_nothing(node):
    """The runtime lost its result cache: DEL has the mappings but no prevResult."""
    m = [port_mapping(9900, 80), port_mapping(9901, 81, "udp")]
    ok(node, "ADD", netconf(m, prev_result("10.244.0.20/24", "fd00:244::20/64")), cid="solo")
    ok(node, "DEL", netconf(m), cid="solo")
    assert node.owned_by("solo") == []


def test_del_without_prev_result_after_being_taken_over_leaves_nothing(node):
    """The same when every port of the container was taken over: its masquerade elements
    and shadowed claims must still go (the claims carry the container IPs)."""
    m = [port_mapping(9900, 80), port_mapping(9901, 81, "udp")]
    ok(node, "ADD", netconf(m, prev_result("10.244.0.20/24", "fd00:244::20/64")), cid="old")
    ok(node, "ADD", netconf(m, prev_result("10.244.0.21/24", "fd00:244::21/64")), cid="new")
    ok(node, "DEL", netconf(m), cid="old")
    assert node.owned_by("old") == []
    assert len(node.owned_by("new")) == 4 + 3


def test_operator_deleted_ip6_table_then_del_check_gc_add(node):
    conf = netconf([port_mapping(8080, 80)], PREV)
    ok(node, "ADD", conf, cid="c1")
    node.host.run("nft", "delete", "table", "ip6", "nlportmap")
    err = rejected(node, "CHECK", conf, 999, cid="c1")
    assert "table ip6 nlportmap missing" in err["msg"]
    assert "missing DNAT tcp [::]:8080 -> [fd00:244::5]:80" in err["msg"] and "0.0.0.0:8080" not in err["msg"]
    ok(node, "ADD", conf, cid="c1")  # the next ADD repairs what is missing
    ok(node, "CHECK", conf, cid="c1")
    node.host.run("nft", "flush", "ruleset")
    gc = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap", "cni.dev/valid-attachments": []}
    ok(node, "GC", gc, cid="", ifname="", netns="")
    ok(node, "DEL", conf, cid="c1")
    assert "nlportmap" not in node.ruleset()
    ok(node, "ADD", conf, cid="c2")
    assert len(node.owned_by("c2")) == 5


def test_operator_flushed_the_prerouting_chain_next_add_repairs_it(node):
    conf = netconf([port_mapping(8080, 80)], PREV)
    ok(node, "ADD", conf, cid="c1")
    node.host.run("nft", "flush", "chain", "ip", "nlportmap", "prerouting")
    assert rejected(node, "CHECK", conf, 999, cid="c1")["msg"].startswith(
        "CHECK failed: table ip nlportmap: chain prerouting has 0 of 1 rules")
    ok(node, "ADD", netconf([port_mapping(8081, 80)], prev_result("10.244.0.6/24")), cid="c2")
    ok(node, "CHECK", conf, cid="c1")


def test_operator_deleted_claims_map_next_takeover_add_repairs_it(node):
    ok(node, "ADD", netconf([port_mapping(8080, 80)], PREV), cid="a")
    node.host.run("nft", "delete", "map", "ip", "nlportmap", "claims")
    ok(node, "ADD", netconf([port_mapping(8080, 80)], prev_result("10.244.0.6/24")), cid="b")
    ok(node, "DEL", netconf([port_mapping(8080, 80)], prev_result("10.244.0.6/24")), cid="b")
    assert {r[0] for r in rows(node, family=4)} == {"a"}


def test_del_with_an_invalid_nft_condition_still_tears_down(node):
    """DEL is lenient about checks upstream does not have (config.py): a conditions list
    that is invalid (e.g. written for a newer nlportmap, or since tightened) must not
    wedge the runtime's teardown."""
    conf = netconf([port_mapping(8080, 80)], PREV)
    ok(node, "ADD", conf, cid="cond")
    bad = dict(conf, conditionsV4=["tcp", "dport", "80"])
    assert rejected(node, "ADD", bad, 7, cid="cond2")["msg"].startswith("failed to parse config: conditionsV4:")
    ok(node, "DEL", bad, cid="cond")
    assert node.owned_by("cond") == []
