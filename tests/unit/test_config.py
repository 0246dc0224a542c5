"""Configuration decoding and validation (nlportmap.config), incl. upstream's
"portmapping configuration" cases (reference §6.1)."""
import json

import pytest

from nlportmap.conditions import Match
from nlportmap.config import (DEFAULT_MARK_BIT, DEFAULT_SERVICE_PROXY_INTERFACES, Attachment, NetConf, PortMapping,
                              backend_specific_options, check_backend_conflict,
                              condition_style, parse_config)
from nlportmap.errors import DecodeFailure, InvalidConfig

UPSTREAM_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
PREFIX = "failed to parse config: "


def cfg(**kw) -> bytes:
    base = {"name": "test", "type": "portmap", "cniVersion": "1.0.0"}
    base.update(kw)
    return json.dumps(base).encode()


def mapping(**kw) -> dict:
    m = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
    m.update(kw)
    return m


def err_of(data, command="CHECK", cls=InvalidConfig):
    with pytest.raises(cls) as exc:
        parse_config(data, command)
    assert type(exc.value) is cls
    return exc.value


# --- upstream portmap_test.go "config parsing" ------------------------------------

@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_parses_an_add_config(ver):
    data = cfg(cniVersion=ver, backend="iptables",
               runtimeConfig={"portMappings": [mapping(), mapping(hostPort=8081, containerPort=81, protocol="udp")]},
               snat=False, conditionsV4=["-a", "b"], conditionsV6=["-c", "d"],
               prevResult={
                   "interfaces": [{"name": "host"}, {"name": "container", "sandbox": "netns"}],
                   "ips": [
                       {"version": "4", "address": "10.0.0.1/24", "gateway": "10.0.0.1", "interface": 0},
                       {"version": "6", "address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1", "interface": 1},
                       {"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1},
                   ]})
    c = parse_config(data, "ADD")
    assert c.cniVersion == ver
    assert c.conditionsV4 == ["-a", "b"]
    assert c.conditionsV6 == ["-c", "d"]
    assert c.snat is False
    assert c.name == "test"
    assert c.backend == "iptables"
    assert c.runtimeConfig.portMappings == [PortMapping(8080, 80, "tcp"), PortMapping(8081, 81, "udp")]
    assert c.container_ips("container") == {4: "10.0.0.2/24", 6: "2001:db8:1::2/64"}
    # iptables-style conditions are not ours to parse
    assert c.parsed_conditions(4) == () and c.parsed_conditions(6) == ()


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_parses_a_del_config(ver):
    c = parse_config(cfg(cniVersion=ver, backend="iptables", snat=False,
                         conditionsV4=["-a", "b"], conditionsV6=["-c", "d"]), "DEL")
    assert (c.cniVersion, c.conditionsV4, c.conditionsV6, c.snat, c.name) == (ver, ["-a", "b"], ["-c", "d"], False, "test")
    assert c.runtimeConfig.portMappings == []
    assert c.prevResult is None and c.echo_result() is None
    assert c.container_ips("container") == {4: None, 6: None}
    assert c.warnings == ()


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_fails_with_invalid_mappings(ver):
    data = cfg(cniVersion=ver, backend="iptables", snat=False, conditionsV4=["-a", "b"],
               conditionsV6=["-c", "d"], runtimeConfig={"portMappings": [mapping(hostPort=0)]})
    e = err_of(data, "CHECK")
    assert e.code == 7
    assert e.msg.startswith("Invalid host port number: 0")
    assert e.msg == "Invalid host port number: 0 (runtimeConfig.portMappings[0].hostPort must be 1-65535)"
    assert err_of(data, "ADD").msg == PREFIX + e.msg
    assert err_of(data, "DEL").msg == PREFIX + e.msg  # upstream's own checks fail DEL too


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_backend_absent_and_nftables_requested(ver):
    assert parse_config(cfg(cniVersion=ver), "ADD").backend is None  # auto: probed elsewhere
    c = parse_config(cfg(cniVersion=ver, backend="nftables"), "ADD")
    assert c.backend == "nftables"


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_nftables_conditions_allowed_with_nftables(ver):
    c = parse_config(cfg(cniVersion=ver, backend="nftables", conditionsV4=["ip", "saddr", "!=", "10.0.0.0/8"],
                         conditionsV6=["iifname", "eth0"]), "ADD")
    assert c.conditionsV4 == ["ip", "saddr", "!=", "10.0.0.0/8"]
    assert c.parsed_conditions(4) == (Match("saddr", True, ("10.0.0.0/8",)),)
    assert c.parsed_conditions(6) == (Match("iifname", False, ("eth0",)),)
    assert c.parsed_conditions(4) is c.parsed_conditions(4)  # cached


def test_upstream_placeholder_nft_conditions_are_rejected_by_our_grammar():
    # upstream accepts ["aaa", "bbbb"] verbatim (nft fails later); we validate up front
    e = err_of(cfg(backend="nftables", conditionsV4=["aaa", "bbbb"], conditionsV6=["ccc"]), "ADD")
    assert e.msg == (PREFIX + 'conditionsV4: unsupported token "aaa" (supported: ip saddr/daddr, '
                     'iifname, oifname with == or !=, anonymous sets)')


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_rejects_nftables_options_with_backend_iptables(ver):
    data = cfg(cniVersion=ver, backend="iptables", conditionsV4=["aaa", "bbbb"], conditionsV6=["ccc"])
    assert err_of(data, "CHECK").msg == (
        "iptables backend was requested but configuration contains nftables-specific options "
        "[conditionsV4 conditionsV6]")


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_rejects_iptables_options_with_backend_nftables(ver):
    data = cfg(cniVersion=ver, backend="nftables", externalSetMarkChain="KUBE-MARK-MASQ",
               conditionsV4=["-a", "b"], conditionsV6=["-c", "d"])
    assert err_of(data, "CHECK").msg == (
        "nftables backend was requested but configuration contains iptables-specific options "
        "[externalSetMarkChain conditionsV4 conditionsV6]")
    assert err_of(data, "ADD").msg == PREFIX + (
        "nftables backend was requested but configuration contains iptables-specific options "
        "[externalSetMarkChain conditionsV4 conditionsV6]")


@pytest.mark.parametrize("ver", UPSTREAM_VERSIONS)
def test_upstream_missing_prevresult_interface_index(ver):
    data = cfg(cniVersion=ver, runtimeConfig={"portMappings": [mapping()]}, conditionsV4=["-a", "b"],
               prevResult={"interfaces": [{"name": "host"}],
                           "ips": [{"version": "4", "address": "10.0.0.1/24", "gateway": "10.0.0.1"}]})
    c = parse_config(data, "ADD")
    assert c.container_ips("container") == {4: "10.0.0.1/24", 6: None}


# --- backend conflict after auto-detection ------------------------------------------

def test_conflict_check_after_autodetect_both_directions():
    c = parse_config(cfg(conditionsV4=["ip", "saddr", "10.0.0.1"], conditionsV6=["ip6", "daddr", "::1"]), "ADD")
    with pytest.raises(InvalidConfig) as exc:
        check_backend_conflict(c, "iptables")
    assert exc.value.msg == PREFIX + ("iptables backend was requested but configuration contains "
                                      "nftables-specific options [conditionsV4 conditionsV6]")
    check_backend_conflict(c, "nftables")  # fine
    c = parse_config(cfg(externalSetMarkChain="X", conditionsV6=["!", "-s", "::1"]), "CHECK")
    with pytest.raises(InvalidConfig) as exc:
        check_backend_conflict(c, "nftables")
    assert exc.value.msg == ("nftables backend was requested but configuration contains "
                             "iptables-specific options [externalSetMarkChain conditionsV6]")
    check_backend_conflict(c, "iptables")


def test_backend_specific_options_and_style():
    assert condition_style(None) is None
    assert condition_style([]) is None
    assert condition_style(["", "-s"]) is None
    assert condition_style(["!", "-s"]) == "iptables"
    assert condition_style(["-s"]) == "iptables"
    assert condition_style(["ip"]) == "nftables"
    c = NetConf(externalSetMarkChain="", conditionsV4=["-s", "x"], conditionsV6=["ip6"])
    assert backend_specific_options(c) == {"iptables": ["externalSetMarkChain", "conditionsV4"],
                                           "nftables": ["conditionsV6"]}


def test_unknown_backend_conflict_wins_then_value_check():
    assert err_of(cfg(backend="bpf", externalSetMarkChain="X"), "CHECK").msg == (
        "bpf backend was requested but configuration contains iptables-specific options [externalSetMarkChain]")
    assert err_of(cfg(backend="bpf"), "CHECK").msg == (
        'unrecognized backend "bpf" (backend must be "nftables" or "iptables")')
    assert err_of(cfg(backend=""), "CHECK").msg == (
        'unrecognized backend "" (backend must be "nftables" or "iptables")')


# --- validation order and texts -------------------------------------------------------

def test_mark_bit_rules():
    assert err_of(cfg(markMasqBit=5, externalSetMarkChain="X"), "CHECK").msg == \
        "Cannot specify externalSetMarkChain and markMasqBit"
    # exclusivity is checked before the range
    assert err_of(cfg(markMasqBit=99, externalSetMarkChain="X"), "CHECK").msg == \
        "Cannot specify externalSetMarkChain and markMasqBit"
    assert err_of(cfg(markMasqBit=32), "CHECK").msg == "MasqMarkBit must be between 0 and 31 (markMasqBit: 32)"
    assert err_of(cfg(markMasqBit=-1), "CHECK").msg == "MasqMarkBit must be between 0 and 31 (markMasqBit: -1)"
    assert parse_config(cfg(markMasqBit=0), "ADD").mark_bit == 0
    assert parse_config(cfg(markMasqBit=31), "ADD").mark_bit == 31
    c = parse_config(cfg(), "ADD")
    assert c.markMasqBit is None and c.mark_bit == DEFAULT_MARK_BIT == 13
    # null is "absent": no exclusivity error
    c = parse_config(cfg(markMasqBit=None, externalSetMarkChain="X", backend="iptables"), "ADD")
    assert c.markMasqBit is None and c.externalSetMarkChain == "X"


def test_range_error_before_backend_and_ports():
    assert err_of(cfg(markMasqBit=40, backend="bpf", runtimeConfig={"portMappings": [mapping(hostPort=0)]}),
                  "CHECK").msg.startswith("MasqMarkBit")
    assert err_of(cfg(backend="bpf", runtimeConfig={"portMappings": [mapping(hostPort=0)]}),
                  "CHECK").msg.startswith("unrecognized backend")


def test_container_port_checked_before_host_port_and_in_mapping_order():
    e = err_of(cfg(runtimeConfig={"portMappings": [mapping(hostPort=0, containerPort=-5)]}))
    assert e.msg == "Invalid container port number: -5 (runtimeConfig.portMappings[0].containerPort must be 1-65535)"
    # upstream's <= 0 checks run over all mappings before our added checks
    e = err_of(cfg(runtimeConfig={"portMappings": [mapping(hostPort=70000), mapping(hostPort=0)]}))
    assert e.msg == "Invalid host port number: 0 (runtimeConfig.portMappings[1].hostPort must be 1-65535)"


def test_missing_ports_count_as_zero():
    e = err_of(cfg(runtimeConfig={"portMappings": [{"hostPort": 1, "protocol": "tcp"}]}))
    assert e.msg.startswith("Invalid container port number: 0 ")
    e = err_of(cfg(runtimeConfig={"portMappings": [None]}))
    assert e.msg.startswith("Invalid container port number: 0 ")


@pytest.mark.parametrize("m,expected", [
    (mapping(hostPort=70000), "runtimeConfig.portMappings[1].hostPort: invalid host port number 70000 (must be 1-65535)"),
    (mapping(containerPort=65536), "runtimeConfig.portMappings[1].containerPort: invalid container port number 65536 (must be 1-65535)"),
    ({"hostPort": 1, "containerPort": 1}, "runtimeConfig.portMappings[1].protocol: missing protocol (must be one of tcp, udp, sctp)"),
    (mapping(protocol=""), "runtimeConfig.portMappings[1].protocol: missing protocol (must be one of tcp, udp, sctp)"),
    (mapping(protocol="icmp"), 'runtimeConfig.portMappings[1].protocol: unsupported protocol "icmp" (must be one of tcp, udp, sctp)'),
    (mapping(protocol=" tcp"), 'runtimeConfig.portMappings[1].protocol: unsupported protocol " tcp" (must be one of tcp, udp, sctp)'),
    (mapping(hostIP="1.2.3"), 'runtimeConfig.portMappings[1].hostIP: invalid IP address "1.2.3"'),
    (mapping(hostIP="10.0.0.1/24"), 'runtimeConfig.portMappings[1].hostIP: invalid IP address "10.0.0.1/24"'),
    (mapping(hostIP="fe80::1%eth0"), 'runtimeConfig.portMappings[1].hostIP: invalid IP address "fe80::1%eth0"'),
])
def test_added_mapping_checks_name_field_and_value(m, expected):
    data = cfg(runtimeConfig={"portMappings": [mapping(), m]})
    assert err_of(data, "CHECK").msg == expected
    assert err_of(data, "ADD").msg == PREFIX + expected


def test_added_mapping_checks_are_lenient_on_del():
    data = cfg(runtimeConfig={"portMappings": [mapping(hostPort=70000), mapping(hostPort=9090, protocol="UDP")]})
    c = parse_config(data, "DEL")
    assert c.runtimeConfig.portMappings == [PortMapping(9090, 80, "udp")]
    assert c.warnings == ("runtimeConfig.portMappings[0].hostPort: invalid host port number 70000 "
                          "(must be 1-65535); mapping ignored for DEL",)


def test_protocol_lowercased_and_hostip_normalised():
    c = parse_config(cfg(runtimeConfig={"portMappings": [
        mapping(protocol="TCP", hostIP=""), mapping(protocol="Sctp", hostIP="::ffff:192.0.2.1"),
        mapping(protocol="udp", hostIP="2001:db8::1")]}), "ADD")
    assert [(m.protocol, m.hostIP) for m in c.runtimeConfig.portMappings] == [
        ("tcp", None), ("sctp", "::ffff:192.0.2.1"), ("udp", "2001:db8::1")]


def test_bad_conditions_fail_add_but_not_del():
    data = cfg(backend="nftables", conditionsV6=["ip6", "saddr", "10.0.0.1"])
    expected = 'conditionsV6: "10.0.0.1" after "ip6 saddr" is an IPv4 address; conditionsV6 needs IPv6'
    assert err_of(data, "ADD").msg == PREFIX + expected
    assert err_of(data, "CHECK").msg == expected
    c = parse_config(data, "DEL")
    assert c.warnings == (expected + "; ignored for DEL",)
    assert c.parsed_conditions(4) == ()
    with pytest.raises(InvalidConfig) as exc:
        c.parsed_conditions(6)
    assert exc.value.msg == PREFIX + expected
    check_backend_conflict(c, "nftables")  # DEL stays lenient


def test_conflict_policy():
    assert parse_config(cfg(), "ADD").conflict_policy == "replace"
    assert parse_config(cfg(conflictPolicy="reject"), "ADD").conflict_policy == "reject"
    assert err_of(cfg(conflictPolicy="Reject"), "CHECK").msg == \
        'conflictPolicy: unrecognized value "Reject" (must be "replace" or "reject")'
    c = parse_config(cfg(conflictPolicy="bogus"), "DEL")
    assert c.conflict_policy == "replace" and len(c.warnings) == 1


# --- decoding: types, JSON errors, key spelling -------------------------------------------

@pytest.mark.parametrize("extra,expected", [
    ({"snat": "true"}, 'snat: expected bool, got str "true"'),
    ({"masqAll": 1}, "masqAll: expected bool, got int 1"),
    ({"markMasqBit": "13"}, 'markMasqBit: expected int | null, got str "13"'),
    ({"runtimeConfig": {"portMappings": [mapping(hostPort=8080.0)]}},
     "runtimeConfig.portMappings[0].hostPort: expected int, got float 8080.0"),
    ({"runtimeConfig": {"portMappings": [mapping(containerPort="80")]}},
     'runtimeConfig.portMappings[0].containerPort: expected int, got str "80"'),
    ({"runtimeConfig": {"portMappings": [mapping(protocol=6)]}},
     "runtimeConfig.portMappings[0].protocol: expected str, got int 6"),
    ({"runtimeConfig": []}, "runtimeConfig: expected object, got array []"),
    ({"conditionsV4": "ip saddr 10.0.0.1"}, 'conditionsV4: expected array | null, got str "ip saddr 10.0.0.1"'),
    ({"prevResult": 5}, "prevResult: expected object | null, got int 5"),
    ({"cni.dev/valid-attachments": [{"containerID": 1}]},
     "cni.dev/valid-attachments[0].containerID: expected str, got int 1"),
    ({"dns": {"nameservers": "8.8.8.8"}}, 'dns.nameservers: expected array | null, got str "8.8.8.8"'),
    ({"capabilities": {"portMappings": "yes"}}, "capabilities[...]: expected bool, got str"),
])
def test_type_mismatches_are_decode_failures(extra, expected):
    e = err_of(cfg(**extra), "CHECK", DecodeFailure)
    assert e.code == 6
    assert e.msg == "failed to parse network configuration: " + expected


@pytest.mark.parametrize("data,expected", [
    (b"{", "failed to parse network configuration: Input data was truncated"),
    (b"", "failed to parse network configuration: Input data was truncated"),
    (b'{"a": NaN}', "failed to parse network configuration: JSON is malformed: invalid character (byte 6)"),
    (b"[1]", "failed to parse network configuration: expected a JSON object, got array"),
    (b'"x"', "failed to parse network configuration: expected a JSON object, got string"),
])
def test_json_errors(data, expected):
    assert err_of(data, "CHECK", DecodeFailure).msg == expected
    assert err_of(data, "DEL", DecodeFailure).msg == PREFIX + expected


def test_deep_nesting_is_a_decode_failure():
    err_of(b"[" * 100000, "ADD", DecodeFailure)


def test_prevresult_errors_are_prefixed_for_add():
    data = cfg(cniVersion="1.0.0", prevResult={"cniVersion": "0.4.0", "ips": []})
    e = err_of(data, "ADD", DecodeFailure)
    assert e.msg == PREFIX + ('could not parse prevResult: result type supports [1.0.0 1.1.0] '
                              'but unmarshalled CNIVersion is "0.4.0"')
    assert err_of(data, "CHECK", DecodeFailure).msg == e.msg[len(PREFIX):]


def test_prevresult_checked_before_other_validation():
    data = cfg(markMasqBit=99, prevResult={"ips": [{"address": "bad"}]})
    assert err_of(data, "CHECK", DecodeFailure).msg.startswith("could not parse prevResult: ")


def test_keys_are_case_insensitive():
    data = json.dumps({
        "NAME": "n", "CNIVERSION": "0.4.0", "SNAT": False, "MasqAll": True, "markmasqbit": 7,
        "Backend": "nftables", "ConditionsV4": ["ip", "saddr", "10.0.0.1"],
        "RUNTIMECONFIG": {"PortMappings": [{"HostPort": 80, "containerport": 8080, "PROTOCOL": "tcp",
                                            "hostIp": "192.0.2.1"}]},
        "PrevResult": {"ips": []}, "ConflictPolicy": "reject",
        "CNI.dev/Valid-Attachments": [{"ContainerId": "c1", "IFNAME": "eth0"}],
    }).encode()
    c = parse_config(data, "ADD")
    assert (c.name, c.cniVersion, c.snat, c.masqAll, c.markMasqBit, c.backend) == ("n", "0.4.0", False, True, 7, "nftables")
    assert c.runtimeConfig.portMappings == [PortMapping(80, 8080, "tcp", "192.0.2.1")]
    assert c.parsed_conditions(4) == (Match("saddr", False, ("10.0.0.1/32",)),)
    assert c.prevResult == {"ips": []} and c.echo_result() == {"cniVersion": "0.4.0", "ips": []}
    assert c.conflict_policy == "reject"
    assert c.valid_attachments == [Attachment("c1", "eth0")]


def test_last_spelling_wins_like_go():
    assert parse_config(b'{"snat": false, "SNAT": true}', "ADD").snat is True
    assert parse_config(b'{"SNAT": true, "snat": false}', "ADD").snat is False
    # a later null leaves the earlier value (Go: null is a no-op for that key)
    assert parse_config(b'{"snat": false, "Snat": null}', "ADD").snat is False


def test_unknown_keys_ignored_and_nulls_are_absent():
    c = parse_config(cfg(capabilities={"portMappings": True}, ipam={}, dns={}, args={"x": 1}, foo=[1, 2],
                         snat=None, runtimeConfig=None, conditionsV4=None, prevResult=None,
                         **{"cni.dev/whatever": 1}), "ADD")
    assert c.snat is True and c.runtimeConfig.portMappings == [] and c.prevResult is None
    assert c.capabilities == {"portMappings": True}
    assert parse_config(cfg(runtimeConfig={"portMappings": None, "bandwidth": {}}), "ADD").runtimeConfig.portMappings == []


def test_cni_version_default():
    assert parse_config(b'{"name": "x"}', "DEL").cniVersion == "0.1.0"
    assert parse_config(b'{"name": "x", "cniVersion": ""}', "DEL").cniVersion == "0.1.0"
    assert parse_config(b"null", "DEL").cniVersion == "0.1.0"


def test_legacy_attachments_key_is_a_fallback():
    c = parse_config(cfg(cniVersion="1.1.0", **{"cni.dev/attachments": [{"containerID": "a", "ifname": "e"}]}), "GC")
    assert c.valid_attachments == [Attachment("a", "e")]
    c = parse_config(cfg(cniVersion="1.1.0", **{"cni.dev/attachments": [{"containerID": "a"}],
                                               "cni.dev/valid-attachments": [{"containerID": "b"}]}), "GC")
    assert c.valid_attachments == [Attachment("b", "")]


def test_accepts_decoded_dict_and_text():
    assert parse_config({"name": "x", "snat": False}, "ADD").snat is False
    assert parse_config('{"name": "x", "masqAll": true}', "ADD").masqAll is True


def test_gc_and_status_have_no_prefix():
    for cmd in ("GC", "STATUS"):
        assert err_of(cfg(markMasqBit=77), cmd).msg == "MasqMarkBit must be between 0 and 31 (markMasqBit: 77)"


def test_netconf_built_directly_parses_conditions_lazily():
    c = NetConf(conditionsV4=["iifname", "eth0"], conditionsV6=["nonsense"])
    assert c.parsed_conditions(4) == (Match("iifname", False, ("eth0",)),)
    with pytest.raises(InvalidConfig):
        c.parsed_conditions(6)


@pytest.mark.parametrize("tok,why", [('eth0"x', "a double quote"), ("e\\y", "a backslash"),
                                     ("e\x01", "a control character")])
def test_unwritable_iptables_tokens_name_their_field(tok, why):
    """Issue 12.6: such tokens are printed unescaped by iptables-save, so the rules could
    not be found and deleted again; refused at ADD (code 7, naming the field), tolerated on DEL."""
    data = cfg(backend="iptables", conditionsV4=["-i", tok])
    e = err_of(data, "ADD")
    assert e.msg.startswith(PREFIX + "conditionsV4[1]: token ") and why in e.msg
    data = cfg(conditionsV6=["!", "-i", tok])
    assert err_of(data, "ADD").msg.startswith(PREFIX + "conditionsV6[2]: ")
    data = cfg(externalSetMarkChain="MARK-" + tok)
    e = err_of(data, "ADD")
    assert e.msg.startswith(PREFIX + "externalSetMarkChain: chain name ") and why in e.msg
    assert "conditionsV4" not in e.msg
    c = parse_config(data, "DEL")
    assert len(c.warnings) == 1 and c.warnings[0].startswith("externalSetMarkChain: ")


def test_nftables_style_conditions_are_not_iptables_tokens():
    # nftables-style lists have their own grammar (quoted interface names are fine there)
    c = parse_config(cfg(backend="nftables", conditionsV4=["iifname", '"eth0"']), "ADD")
    assert c.warnings == ()
    assert parse_config(cfg(externalSetMarkChain="PLZ-SET-MARK"), "ADD").externalSetMarkChain == "PLZ-SET-MARK"
    assert "whitespace" in err_of(cfg(externalSetMarkChain="A B"), "ADD").msg

# --- serviceProxyInterfaces (issue 15) ------------------------------------------------

def test_service_proxy_interfaces_default_empty_and_given():
    assert parse_config(cfg(), "ADD").service_proxy_interfaces == ("kube-ipvs0", "kube-dummy-if")
    assert parse_config(cfg(serviceProxyInterfaces=None), "ADD").service_proxy_interfaces == \
        DEFAULT_SERVICE_PROXY_INTERFACES
    assert parse_config(cfg(serviceProxyInterfaces=[]), "ADD").service_proxy_interfaces == ()
    # case-sensitive names; the key itself is matched case-insensitively like every key
    assert parse_config(cfg(serviceproxyinterfaces=["Kube-IPVS0", "x" * 15]), "ADD") \
        .service_proxy_interfaces == ("Kube-IPVS0", "x" * 15)


@pytest.mark.parametrize("name,expected", [
    ("", 'serviceProxyInterfaces[1]: invalid interface name ""'),
    ("..", 'serviceProxyInterfaces[1]: invalid interface name ".."'),
    ("x" * 16, f'serviceProxyInterfaces[1]: interface name "{"x" * 16}" is longer than 15 bytes'),
    ("ä" * 8, f'serviceProxyInterfaces[1]: interface name "{"ä" * 8}" is longer than 15 bytes'),
    ("a/b", "serviceProxyInterfaces[1]: invalid interface name 'a/b' (no '/', ':', whitespace or NUL)"),
    ("a:b", "serviceProxyInterfaces[1]: invalid interface name 'a:b' (no '/', ':', whitespace or NUL)"),
    ("a b", "serviceProxyInterfaces[1]: invalid interface name 'a b' (no '/', ':', whitespace or NUL)"),
    ("a\tb", "serviceProxyInterfaces[1]: invalid interface name 'a\\tb' (no '/', ':', whitespace or NUL)"),
    ("a\0b", "serviceProxyInterfaces[1]: invalid interface name 'a\\x00b' (no '/', ':', whitespace or NUL)"),
])
def test_service_proxy_interfaces_are_validated(name, expected):
    data = cfg(serviceProxyInterfaces=["kube-ipvs0", name])
    e = err_of(data, "ADD")
    assert e.code == 7 and e.msg == PREFIX + expected
    assert err_of(data, "CHECK").msg == expected
    c = parse_config(data, "DEL")  # DEL does not use the list: warn, do not fail teardown
    assert len(c.warnings) == 1 and expected in c.warnings[0]


def test_service_proxy_interfaces_type_errors_are_decode_failures():
    e = err_of(cfg(serviceProxyInterfaces="kube-ipvs0"), "ADD", DecodeFailure)
    assert e.code == 6 and "serviceProxyInterfaces: expected array | null" in e.msg
    e = err_of(cfg(serviceProxyInterfaces=[1]), "ADD", DecodeFailure)
    assert "serviceProxyInterfaces[0]: expected str, got int 1" in e.msg


def test_keys_fold_like_go_not_like_casefold():
    """Go matches keys by simple case folding: the Kelvin sign and long s match k and s,
    but ligatures and sharp s do not expand (adversarial review: ``"hoﬆPort"`` must not be
    ``hostPort``, as with upstream)."""
    base = {"cniVersion": "1.0.0", "name": "n", "type": "portmap"}
    lig = parse_config({**base, "runtimeConﬁg": {"portMappings": [
        {"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}]}}, "DEL")
    assert lig.runtimeConfig.portMappings == []
    lig2 = parse_config({**base, "runtimeConfig": {"portMappings": [
        {"hoﬆPort": 9090, "hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}, "ADD")
    assert [m.hostPort for m in lig2.runtimeConfig.portMappings] == [8080]
    kelvin = parse_config({**base, "\u017fnat": False, "mar\u212aMasqBit": 14}, "ADD")
    assert (kelvin.snat, kelvin.markMasqBit) == (False, 14)
