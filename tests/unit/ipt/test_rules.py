"""Pure tests of the iptables layout (nlportmap.ipt.rules): no root, no tools.

The expected rule lists are the reference's test vectors (portmap-behaviour.md
§3.3, §3.5-§3.8), which mirror upstream's portmap_iptables_test.go
("generates a correct standard container chain", "... with external mark",
"... top-level chain", "... the correct mark chains").
"""
from __future__ import annotations

from types import SimpleNamespace as NS

from pathlib import Path

import pytest

from nlportmap.ipt import rules as R
from nlportmap.plan import Owner, make_plan

LONG_ID = ("icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ah"
           "faeng8yohb9ceu0daez5hashee8ooYai5wa3y")


def pm(host, cont, proto="tcp", hip=None):
    return NS(hostPort=host, containerPort=cont, protocol=proto, hostIP=hip)


def conf(mappings, *, snat=True, masq_all=False, bit=13, ext=None, c4=None, c6=None):
    return NS(runtimeConfig=NS(portMappings=list(mappings)), snat=snat, masqAll=masq_all,
              markMasqBit=bit, externalSetMarkChain=ext, conditionsV4=c4, conditionsV6=c6,
              parsed_conditions=lambda fam: ())


def plan(mappings, ips, *, network="test", cid=LONG_ID, **kw):
    return make_plan(conf(mappings, **kw), ips, Owner(cid, "eth0", network))


# §3.6: the eight mappings of upstream's test
TEST_MAPPINGS = [pm(8080, 80), pm(8081, 80), pm(8080, 81, "udp"), pm(8082, 82, "udp"),
                 pm(8083, 83, hip="192.168.0.2"), pm(8084, 84, hip="0.0.0.0"),
                 pm(8085, 85, hip="2001:db8:a::1"), pm(8086, 86, hip="::")]
IPS = {4: "10.0.0.2/24", 6: "2001:db8::2/64"}


def lines(rules):
    return [" ".join(r) for r in rules]


# ------------------------------------------------------------------ §3.3
@pytest.mark.parametrize("network,cid,dn", [
    ("testNetName", LONG_ID, "CNI-DN-bfd599665540dd91d5d28"),
    ("test", LONG_ID, "CNI-DN-67e92b96e692a494b6b85"),
    ("mynet", "c1", "CNI-DN-f0bca4ac77cde1bf2f3da"),
    ("cni-portmap-unit-test", "unit-test-1234", "CNI-DN-49dc018ad13462c355e48"),
])
def test_chain_names(network, cid, dn):
    assert R.dn_chain(network, cid) == dn
    assert len(dn) == 28
    assert R.sn_chain(network, cid) == "CNI-SN-" + dn[len("CNI-DN-"):]


def test_sn_chain_example():
    assert R.sn_chain("mynet", "c1") == "CNI-SN-f0bca4ac77cde1bf2f3da"


# ------------------------------------------------------------------ §2.6, §3.7
@pytest.mark.parametrize("bit,spec", [(13, "0x2000/0x2000"), (5, "0x20/0x20"), (0, "0x1/0x1"),
                                      (31, "0x80000000/0x80000000")])
def test_mark_spec(bit, spec):
    assert R.mark_spec(bit) == spec


@pytest.mark.parametrize("bit", [-1, 32])
def test_mark_spec_range(bit):
    with pytest.raises(ValueError):
        R.mark_spec(bit)


def test_mark_chains_bit5():
    # "generates the correct mark chains"
    assert R.setmark_rule(5) == ["-m", "comment", "--comment", "CNI portfwd masquerade mark",
                                 "-j", "MARK", "--set-xmark", "0x20/0x20"]
    assert R.masq_rule(5) == ["-m", "mark", "--mark", "0x20/0x20", "-j", "MASQUERADE"]
    assert R.postrouting_jump() == ["-m", "comment", "--comment", "CNI portfwd requiring masquerade",
                                    "-j", "CNI-HOSTPORT-MASQ"]


def test_toplevel_chain():
    # "generates a correct top-level chain"
    assert R.DNAT_CHAIN == "CNI-HOSTPORT-DNAT"
    assert R.TOPLEVEL_ENTRY_CHAINS == ("PREROUTING", "OUTPUT")
    assert R.toplevel_jump() == ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]


# ------------------------------------------------------------------ §3.6
V4_RULES = """\
-p tcp --dport 8080 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-p tcp --dport 8081 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8081 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8081 -j DNAT --to-destination 10.0.0.2:80
-p udp --dport 8080 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8080 -j DNAT --to-destination 10.0.0.2:81
-p udp --dport 8082 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8082 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8082 -j DNAT --to-destination 10.0.0.2:82
-p tcp --dport 8083 -d 192.168.0.2 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8083 -d 192.168.0.2 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8083 -d 192.168.0.2 -j DNAT --to-destination 10.0.0.2:83
-p tcp --dport 8084 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8084 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8084 -j DNAT --to-destination 10.0.0.2:84""".splitlines()

V6_RULES = """\
-p tcp --dport 8080 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8080 -j DNAT --to-destination [2001:db8::2]:80
-p tcp --dport 8081 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8081 -j DNAT --to-destination [2001:db8::2]:80
-p udp --dport 8080 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8080 -j DNAT --to-destination [2001:db8::2]:81
-p udp --dport 8082 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p udp --dport 8082 -j DNAT --to-destination [2001:db8::2]:82
-p tcp --dport 8085 -d 2001:db8:a::1 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8085 -d 2001:db8:a::1 -j DNAT --to-destination [2001:db8::2]:85
-p tcp --dport 8086 -s 2001:db8::2/64 -j CNI-HOSTPORT-SETMARK
-p tcp --dport 8086 -j DNAT --to-destination [2001:db8::2]:86""".splitlines()

COMMENT = f'dnat name: "test" id: "{LONG_ID}"'


def test_standard_chain_v4():
    p = plan(TEST_MAPPINGS, IPS, c4=["-a", "b"], c6=["-c", "d"])
    cc = R.container_chain(p, 4)
    assert cc.name == "CNI-DN-67e92b96e692a494b6b85"
    assert lines(cc.rules) == V4_RULES
    assert [list(r) for r in cc.entry_rules] == [
        ["-m", "comment", "--comment", COMMENT, "-m", "multiport", "-p", "tcp",
         "--destination-ports", "8080,8081,8083,8084,8085,8086", "-a", "b", "-j", cc.name],
        ["-m", "comment", "--comment", COMMENT, "-m", "multiport", "-p", "udp",
         "--destination-ports", "8080,8082", "-a", "b", "-j", cc.name],
    ]


def test_standard_chain_v6():
    p = plan(TEST_MAPPINGS, IPS, c4=["-a", "b"], c6=["-c", "d"])
    cc = R.container_chain(p, 6)
    assert lines(cc.rules) == V6_RULES
    assert [list(r) for r in cc.entry_rules] == [
        ["-m", "comment", "--comment", COMMENT, "-m", "multiport", "-p", "tcp",
         "--destination-ports", "8080,8081,8083,8084,8085,8086", "-c", "d", "-j", cc.name],
        ["-m", "comment", "--comment", COMMENT, "-m", "multiport", "-p", "udp",
         "--destination-ports", "8080,8082", "-c", "d", "-j", cc.name],
    ]


def test_standard_chain_testnetname():
    p = plan(TEST_MAPPINGS, IPS, network="testNetName")
    assert R.container_chain(p, 4).name == "CNI-DN-bfd599665540dd91d5d28"


def test_snat_false_only_dnat():
    p = plan(TEST_MAPPINGS, IPS, snat=False)
    cc = R.container_chain(p, 4)
    assert lines(cc.rules) == [ln for ln in V4_RULES if "DNAT" in ln]
    assert len(cc.rules) == 6
    assert not cc.needs_mark_chains


def test_external_mark_chain():
    p = plan([pm(8080, 80)], {4: "10.0.0.2/24"}, bit=None, ext="PLZ-SET-MARK")
    cc = R.container_chain(p, 4)
    assert lines(cc.rules) == [
        "-p tcp --dport 8080 -s 10.0.0.2/24 -j PLZ-SET-MARK",
        "-p tcp --dport 8080 -s 127.0.0.1 -j PLZ-SET-MARK",
        "-p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80",
    ]
    assert not cc.needs_mark_chains
    body = R.add_lines(cc, R.NatTable())
    assert not any("SETMARK" in ln or "HOSTPORT-MASQ" in ln or "POSTROUTING" in ln for ln in body)


@pytest.mark.parametrize("fam,src", [(4, "0.0.0.0/0"), (6, "::/0")])
def test_masq_all(fam, src):
    p = plan([pm(8080, 80)], IPS, masq_all=True)
    cc = R.container_chain(p, fam)
    assert lines(cc.rules)[0] == f"-p tcp --dport 8080 -s {src} -j CNI-HOSTPORT-SETMARK"
    assert len(cc.rules) == 2  # no localhost rule with masqAll


def test_mark_bit_5_shared_rules_in_restore():
    p = plan([pm(8080, 80)], {4: "10.0.0.2/24"}, bit=5)
    body = R.add_lines(R.container_chain(p, 4), R.NatTable())
    assert '-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x20/0x20' in body
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE" in body


# ------------------------------------------------------------------ §3.5 entry rules
def test_entry_rules_split_at_15_ports():
    ms = [pm(9000 + i, 80) for i in range(20)]
    er = R.entry_match_rules(ms, "n", "c", None)
    assert len(er) == 2
    assert er[0][er[0].index("--destination-ports") + 1] == ",".join(str(9000 + i) for i in range(15))
    assert er[1][er[1].index("--destination-ports") + 1] == ",".join(str(9000 + i) for i in range(15, 20))
    assert er[0][-1] == er[0][er[0].index("--destination-ports") + 1]  # no conditions appended


def test_entry_rules_exactly_15_one_rule():
    assert len(R.entry_match_rules([pm(9000 + i, 80) for i in range(15)], "n", "c", None)) == 1
    assert len(R.entry_match_rules([pm(9000 + i, 80) for i in range(16)], "n", "c", None)) == 2


def test_entry_rules_protocols_sorted_and_order_kept():
    ms = [pm(3, 1, "udp"), pm(2, 1, "tcp"), pm(1, 1, "sctp"), pm(9, 1, "tcp"), pm(4, 1, "udp")]
    er = R.entry_match_rules(ms, "n", "c", [])
    assert [(r[7], r[9]) for r in er] == [("sctp", "1"), ("tcp", "2,9"), ("udp", "3,4")]
    assert all(len(r) == 10 for r in er)  # empty conditions list: nothing appended


def test_entry_rules_include_other_family_hostip_and_conditions():
    p = plan([pm(8080, 80, hip="2001:db8::1"), pm(8081, 81)], {4: "10.0.0.2/24"}, c4=["!", "-i", "eth9"])
    cc = R.container_chain(p, 4)
    assert len(cc.rules) == 3  # 8080 skipped for v4 (IPv6 hostIP)
    (e,) = cc.entry_rules
    assert e[e.index("--destination-ports") + 1] == "8080,8081"
    assert list(e[-5:]) == ["!", "-i", "eth9", "-j", cc.name]


def test_entry_rules_duplicates_kept():
    er = R.entry_match_rules([pm(80, 1, hip="1.2.3.4"), pm(80, 1, hip="1.2.3.5")], "n", "c", None)
    assert er[0][9] == "80,80"


def test_comment_format_and_trim():
    assert R.dnat_comment("mynet", "c1") == 'dnat name: "mynet" id: "c1"'
    long = R.dnat_comment("n" * 100, "c" * 200)
    assert len(long) == 255 and long.endswith("...")
    assert R.parse_dnat_comment('dnat name: "mynet" id: "c1"') == ("mynet", "c1")
    assert R.parse_dnat_comment(long) is None
    assert R.parse_dnat_comment("CNI portfwd masquerade mark") is None


# ------------------------------------------------------------------ restore syntax
def test_quote():
    assert R.quote("abc") == "abc"
    assert R.quote('dnat name: "n" id: "c"') == r'"dnat name: \"n\" id: \"c\""'
    assert R.quote("") == '""'
    assert R.quote("a\\b") == r'"a\\b"'
    with pytest.raises(ValueError):
        R.quote("a\nb")


@pytest.mark.parametrize("tok", ["plain", "with space", 'q"uote', "it's", "back\\slash", "", "#x"])
def test_quote_split_roundtrip(tok):
    assert R.split_rule("-m comment --comment " + R.quote(tok) + " -j X") == ["-m", "comment", "--comment", tok, "-j", "X"]


def test_split_rule_save_escapes():
    # how iptables-save 1.8.9 prints quotes and apostrophes (seen on the real tool)
    assert R.split_rule(r'-m comment --comment "it\'s" -j RETURN')[3] == "it's"
    assert R.split_rule(r'-m comment --comment "a \"b\" c" -j RETURN')[3] == 'a "b" c'


# §3.8 worked example, as the upstream Go plugin left it (iptables-save 1.8.9, nf_tables)
UPSTREAM_SAVE = (Path(__file__).resolve().parents[2] / "data" / "upstream-3.8-iptables-save.txt").read_text()
DN = "CNI-DN-f0bca4ac77cde1bf2f3da"
MYNET = [pm(8080, 80), pm(5353, 53, "udp", "192.168.1.10")]


def mynet_chain(**kw):
    return R.container_chain(plan(MYNET, {4: "10.22.0.5/16"}, network="mynet", cid="c1", **kw), 4)


def test_worked_example_rules():
    cc = mynet_chain()
    assert cc.name == DN
    assert lines(cc.rules) == [
        "-p tcp --dport 8080 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK",
        "-p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
        "-p tcp --dport 8080 -j DNAT --to-destination 10.22.0.5:80",
        "-p udp --dport 5353 -d 192.168.1.10 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK",
        "-p udp --dport 5353 -d 192.168.1.10 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
        "-p udp --dport 5353 -d 192.168.1.10 -j DNAT --to-destination 10.22.0.5:53",
    ]


def test_restore_text_fresh_table():
    cc = mynet_chain()
    body = R.add_lines(cc, R.parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"))
    assert R.restore_text(body) == "\n".join([
        "*nat",
        "-N CNI-HOSTPORT-SETMARK",
        '-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000',
        "-N CNI-HOSTPORT-MASQ",
        "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
        '-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ',
        "-N CNI-HOSTPORT-DNAT",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        f":{DN} - [0:0]",
        f"-A {DN} -p tcp --dport 8080 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p tcp --dport 8080 -j DNAT --to-destination 10.22.0.5:80",
        f"-A {DN} -p udp --dport 5353 -d 192.168.1.10 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p udp --dport 5353 -d 192.168.1.10 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
        f"-A {DN} -p udp --dport 5353 -d 192.168.1.10 -j DNAT --to-destination 10.22.0.5:53",
        rf'-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport -p tcp --destination-ports 8080 -j {DN}',
        rf'-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport -p udp --destination-ports 5353 -j {DN}',
        "COMMIT", ""])


def test_restore_text_readd_over_upstream_state():
    """Shared chains/rules present: none re-created; the container chain is
    re-declared (flushed), old entry rules deleted by their saved text, new ones appended."""
    body = R.add_lines(mynet_chain(), R.parse_save(UPSTREAM_SAVE))
    assert not any(ln.startswith("-N ") for ln in body)
    assert not any("SETMARK -m comment" in ln or "MASQUERADE" in ln or "PREROUTING" in ln
                   or "OUTPUT" in ln or "POSTROUTING" in ln for ln in body)
    assert body[0] == f":{DN} - [0:0]"
    dels = [ln for ln in body if ln.startswith("-D ")]
    assert dels == [
        rf'-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport --dports 8080 -j {DN}',
        rf'-D CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport --dports 5353 -j {DN}',
    ]
    # chain content before its entry rules become reachable
    assert max(i for i, ln in enumerate(body) if ln.startswith(f"-A {DN}")) < \
        min(i for i, ln in enumerate(body) if ln.startswith("-A CNI-HOSTPORT-DNAT"))


def test_restore_text_changed_mark_bit_adds_rules():
    body = R.add_lines(mynet_chain(bit=5), R.parse_save(UPSTREAM_SAVE))
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE" in body
    assert not any(ln.startswith("-N ") for ln in body)


def test_restore_text_front_inserts_in_order():
    body = R.add_lines(mynet_chain(), R.NatTable(), front=True)
    ins = [ln for ln in body if ln.startswith("-I CNI-HOSTPORT-DNAT")]
    assert [ln.split()[2] for ln in ins] == ["1", "2"]
    assert "-p tcp" in ins[0] and "-p udp" in ins[1]


def test_teardown_lines():
    nt = R.parse_save(UPSTREAM_SAVE)
    body = R.teardown_lines(nt, [DN, R.sn_chain("mynet", "c1")])
    assert body == [
        rf'-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport --dports 8080 -j {DN}',
        rf'-D CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"mynet\" id: \"c1\"" -m multiport --dports 5353 -j {DN}',
        f":{DN} - [0:0]",
        f"-X {DN}",
    ]
    assert R.teardown_lines(nt, ["CNI-DN-0000000000000000000000"]) == []
    assert R.teardown_lines(R.NatTable(), [DN]) == []


def test_parse_save_and_installed():
    nt = R.parse_save(UPSTREAM_SAVE)
    assert set(nt.chains) == {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", DN, "CNI-HOSTPORT-DNAT",
                              "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"}
    assert nt.has_rule("CNI-HOSTPORT-SETMARK", R.setmark_rule(13))
    assert nt.has_rule("POSTROUTING", R.postrouting_jump())
    assert nt.has_rule("OUTPUT", R.toplevel_jump())
    assert not nt.has_rule("CNI-HOSTPORT-MASQ", R.masq_rule(5))
    ((name, who, rules),) = R.installed(nt)
    assert name == DN and who == ("mynet", "c1")
    assert rules == [R.DnatRule("tcp", None, 8080, "10.22.0.5", 80),
                     R.DnatRule("udp", "192.168.1.10", 5353, "10.22.0.5", 53)]


def test_parse_dnat_rule_v6_and_foreign():
    assert R.parse_dnat_rule("-d 2001:db8:a::1/128 -p tcp -m tcp --dport 81 -j DNAT --to-destination [2001:db8::2]:81") \
        == R.DnatRule("tcp", "2001:db8:a::1", 81, "2001:db8::2", 81)
    assert R.parse_dnat_rule("-p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK") is None
    assert R.parse_dnat_rule("! -d 1.2.3.4/32 -p tcp -m tcp --dport 1 -j DNAT --to-destination 1.1.1.1:1") is None
    assert R.parse_dnat_rule("-p tcp -m tcp --dport 1:9 -j DNAT --to-destination 1.1.1.1:1") is None


def test_conflicts():
    nt = R.parse_save(UPSTREAM_SAVE)
    other = R.container_chain(plan([pm(8080, 90), pm(5353, 53, "udp")], {4: "10.22.0.9/16"},
                                   network="mynet", cid="c2"), 4)
    fws = plan([pm(8080, 90), pm(5353, 53, "udp")], {4: "10.22.0.9/16"}, network="mynet", cid="c2").forwards
    clash = R.conflicts(other, fws, nt)
    # tcp 8080 (any address) clashes; udp 5353 differs in hostIP (any vs 192.168.1.10)
    assert [(f.proto, f.host_port, chain, who) for f, chain, who in clash] == [("tcp", 8080, DN, ("mynet", "c1"))]
    assert R.conflicts(mynet_chain(), fws, nt) == []  # our own chain never conflicts


def test_check_lines():
    cc = mynet_chain()
    items = R.check_lines(cc)
    assert items[0] == (DN, "-p tcp --dport 8080 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK",
                        f"-C {DN} -p tcp --dport 8080 -s 10.22.0.5/16 -j CNI-HOSTPORT-SETMARK")
    assert [c for c, _, _ in items] == [DN] * 6 + ["CNI-HOSTPORT-DNAT"] * 2 + [
        "PREROUTING", "OUTPUT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ", "POSTROUTING"]


def test_duplicate_shared_rules_are_collapsed():
    dup = UPSTREAM_SAVE.replace(
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n" * 2).replace(
        '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ\n',
        '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ\n' * 3)
    body = R.add_lines(mynet_chain(), R.parse_save(dup))
    out = [ln for ln in body if "OUTPUT" in ln or "POSTROUTING" in ln]
    assert out == ['-D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'] * 3 + [
        '-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'] + [
        "-D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"] * 2 + [
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"]


# ------------------------------------------------------------ issue 12.6: rules that do not round-trip
def test_jump_target_and_text_safety_read_the_raw_saved_text():
    dn = "CNI-DN-f0bca4ac77cde1bf2f3da"
    ours = f'-m comment --comment "dnat name: \\"mynet\\" id: \\"c1\\"" -m multiport -p tcp --dports 80 -j {dn}'
    assert (R.jump_target(ours), R.text_safe(ours)) == (dn, True)
    for bad in (f'-i eth0"x -j {dn}', f"-i e\\y -j {dn}", f'-i "ab -j {dn}'):
        assert (R.jump_target(bad), R.text_safe(bad)) == (dn, False), bad
    assert R.jump_target("-p tcp -j DNAT --to-destination 10.0.0.2:80") is None


def test_unsafe_referrers_are_deleted_by_position_highest_first():
    dn = "CNI-DN-f0bca4ac77cde1bf2f3da"
    nt = R.NatTable({R.DNAT_CHAIN: ["-p tcp -j CNI-DN-other", f'-i eth0"x -j {dn}', "-p udp -j CNI-DN-other",
                                    f"-i e\\y -j {dn}", f"-p tcp -j {dn}"], dn: []})
    assert R.teardown_lines(nt, [dn]) == [f"-D {R.DNAT_CHAIN} 4", f"-D {R.DNAT_CHAIN} 2",
                                          f"-D {R.DNAT_CHAIN} -p tcp -j {dn}", f":{dn} - [0:0]", f"-X {dn}"]


# ------------------------------------------------------------ issue 12.4: localnet guard
def test_guard_lines_create_once():
    lines = R.guard_lines(R.NatTable())
    assert lines == [
        "-N CNI-HOSTPORT-LOCALNET",
        '-A CNI-HOSTPORT-LOCALNET -d 127.0.0.0/8 ! -i lo -m comment --comment '
        '"CNI portfwd: drop 127.0.0.0/8 from non-loopback interfaces" -j DROP',
        '-I PREROUTING 1 -m comment --comment "CNI portfwd localnet guard" -j CNI-HOSTPORT-LOCALNET']
    saved = R.parse_save("*raw\n:PREROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-LOCALNET - [0:0]\n"
                         + "".join(ln.replace("-I PREROUTING 1", "-A PREROUTING") + "\n" for ln in lines[1:])
                         + "COMMIT\n", "raw")
    assert R.guard_lines(saved) == []


# ------------------------------------------------------------ issue 16: undo of one ADD
def _saved(lines):
    return R.parse_save("*nat\n" + "".join(ln + "\n" for ln in lines) + "COMMIT\n")


def test_undo_of_a_first_add_removes_everything_it_created():
    p = plan([pm(8080, 80)], {4: "10.0.0.2/24"}, network="mynet", cid="c1")
    cc = R.container_chain(p, 4)
    before = R.NatTable({"PREROUTING": [], "OUTPUT": [], "POSTROUTING": []})
    # "now" as if add_lines had been applied (texts as our tokens render them)
    now = _saved([":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
                 + [ln.replace("-I POSTROUTING 1", "-A POSTROUTING") if not ln.startswith("-N") else
                    ":" + ln[3:] + " - [0:0]" for ln in R.add_lines(cc, before) if not ln.startswith(":")]
                 + [f":{cc.name} - [0:0]"])
    undo = R.undo_lines(cc, before, now)
    after = R.NatTable({c: list(r) for c, r in now.chains.items()})
    for ln in undo:  # replay the undo on the parsed table
        op, rest = ln.split(" ", 1) if not ln.startswith(":") else (":", ln[1:].split()[0])
        if op == "-D":
            c, spec = rest.split(" ", 1)
            after.chains[c].remove(spec)
        elif op == ":":
            after.chains[rest] = []
        elif op == "-X":
            del after.chains[rest]
    assert after == before


def test_undo_of_a_readd_restores_the_previous_rules_at_their_positions():
    dn = R.dn_chain("mynet", "c1")
    p = plan([pm(8081, 80)], {4: "10.0.0.2/24"}, network="mynet", cid="c1", snat=False)
    cc = R.container_chain(p, 4)
    old_rule = "-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"
    old_entry = f'-m comment --comment "dnat name: \\"mynet\\" id: \\"c1\\"" -p tcp -m multiport --dports 8080 -j {dn}'
    other = '-m comment --comment "dnat name: \\"mynet\\" id: \\"c2\\"" -p tcp -m multiport --dports 9 -j CNI-DN-x'
    jumps = ["-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"]
    before = R.NatTable({"PREROUTING": jumps, "OUTPUT": jumps, R.DNAT_CHAIN: [other, old_entry], dn: [old_rule],
                         "CNI-DN-x": []})
    new_entry = old_entry.replace("8080", "8081")
    now = R.NatTable({"PREROUTING": jumps, "OUTPUT": jumps, R.DNAT_CHAIN: [other, new_entry],
                      dn: [old_rule.replace("8080", "8081")], "CNI-DN-x": []})
    assert R.undo_lines(cc, before, now) == [
        f"-D {R.DNAT_CHAIN} {new_entry}", f":{dn} - [0:0]", f"-A {dn} {old_rule}",
        f"-I {R.DNAT_CHAIN} 2 {old_entry}"]


def test_undo_shared_lines_keeps_a_chain_someone_else_jumps_to():
    # a shared chain this ADD created but another rule (not removed) now jumps to stays;
    # one nothing refers to any more goes (was a NameError: undefined keep_referenced)
    before = R.parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    now = R.parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:FOO - [0:0]\n:BAR - [0:0]\n-A BAR -j FOO\nCOMMIT\n")
    assert R.undo_shared_lines(before, now, ["FOO"], []) == []
    assert R.undo_shared_lines(before, now, ["FOO"], [], gone=[("BAR", "-j FOO")]) == [":FOO - [0:0]", "-X FOO"]
