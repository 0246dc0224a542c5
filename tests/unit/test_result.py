"""prevResult validation and container IP choice (nlportmap.result)."""
import pytest

from nlportmap.errors import DecodeFailure
from nlportmap.result import container_ips, decode_prev_result, result_family

ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def shape_for(version: str) -> dict:
    """A realistic prevResult of ``version`` (bridge + host-local, dual stack)."""
    if version in ("0.1.0", "0.2.0"):
        return {
            "cniVersion": version,
            "ip4": {"ip": "10.22.0.5/16", "gateway": "10.22.0.1",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}]},
            "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1"},
            "dns": {"nameservers": ["10.22.0.1"]},
        }
    ips = [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2},
           {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}]
    if version.startswith("0."):
        ips[0]["version"], ips[1]["version"] = "4", "6"
    iface_extra = {"mtu": 1500} if version.startswith("1.") else {}
    return {
        "cniVersion": version,
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                       {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
                       {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/var/run/netns/c1",
                        **iface_extra}],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_version_decodes_echoes_and_selects(version):
    prev = shape_for(version)
    echo = decode_prev_result(prev, version)
    assert echo == prev  # nothing dropped, version already right
    assert next(iter(echo)) == "cniVersion"
    assert container_ips(echo, "eth0") == {4: "10.22.0.5/16", 6: "fd00::5/64"}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_missing_version_takes_the_config_version(version):
    prev = shape_for(version)
    del prev["cniVersion"]
    echo = decode_prev_result(prev, version)
    assert echo["cniVersion"] == version
    assert "cniVersion" not in prev  # input untouched


@pytest.mark.parametrize("conf,prev", [("0.4.0", "0.3.1"), ("0.3.0", "0.4.0"), ("1.1.0", "1.0.0"), ("0.1.0", "0.2.0")])
def test_same_family_other_version_is_reversioned(conf, prev):
    p = shape_for(prev)
    echo = decode_prev_result(p, conf)
    assert echo["cniVersion"] == conf
    assert p["cniVersion"] == prev


@pytest.mark.parametrize("conf,prev,supported", [
    ("1.0.0", "0.4.0", "[1.0.0 1.1.0]"),
    ("1.1.0", "0.3.1", "[1.0.0 1.1.0]"),
    ("0.4.0", "1.0.0", "[0.3.0 0.3.1 0.4.0]"),
    ("0.3.1", "0.2.0", "[0.3.0 0.3.1 0.4.0]"),
    ("0.2.0", "0.4.0", "[ 0.1.0 0.2.0]"),
])
def test_family_mismatch_has_upstream_text(conf, prev, supported):
    with pytest.raises(DecodeFailure) as exc:
        decode_prev_result(shape_for(prev), conf)
    assert exc.value.code == 6
    assert exc.value.msg == (f"could not parse prevResult: result type supports {supported} "
                             f'but unmarshalled CNIVersion is "{prev}"')


def test_version_key_matching_is_case_insensitive_and_lowercase_wins():
    # Go marshals the map sorted: "CNIVersion" < "cniVersion", the latter is decoded last
    prev = {"CNIVersion": "1.0.0", "cniVersion": "0.4.0", "ips": []}
    with pytest.raises(DecodeFailure, match=r'unmarshalled CNIVersion is "0\.4\.0"'):
        decode_prev_result(prev, "1.0.0")
    echo = decode_prev_result({"CNIVERSION": "1.0.0", "ips": []}, "1.1.0")
    assert echo == {"cniVersion": "1.1.0", "ips": []}


def test_empty_version_only_fits_020():
    assert decode_prev_result({"cniVersion": ""}, "0.2.0") == {"cniVersion": "0.2.0"}
    with pytest.raises(DecodeFailure, match='unmarshalled CNIVersion is ""'):
        decode_prev_result({"cniVersion": ""}, "1.0.0")


def test_unknown_keys_are_kept():
    echo = decode_prev_result({"ips": [], "vendor": {"x": 1}}, "1.0.0")
    assert echo == {"cniVersion": "1.0.0", "ips": [], "vendor": {"x": 1}}


@pytest.mark.parametrize("version,prev,expected", [
    ("1.0.0", {"ips": [{"address": "10.0.0.300/24"}]}, "ips[0].address: invalid CIDR address: 10.0.0.300/24"),
    ("1.0.0", {"ips": [{"address": "10.0.0.3"}]}, "ips[0].address: invalid CIDR address: 10.0.0.3"),
    ("1.0.0", {"ips": [{"address": "10.0.0.3/255.255.255.0"}]},
     "ips[0].address: invalid CIDR address: 10.0.0.3/255.255.255.0"),
    ("1.0.0", {"ips": [{"address": "fe80::1%eth0/64"}]}, "ips[0].address: invalid CIDR address: fe80::1%eth0/64"),
    ("1.0.0", {"ips": [{"address": "10.0.0.3/24", "gateway": "10.0.0"}]}, "ips[0].gateway: invalid IP address: 10.0.0"),
    ("0.4.0", {"ips": [{"address": "10.0.0.3/24", "interface": "1"}]}, 'ips[0].interface: expected an integer, got string "1"'),
    ("1.0.0", {"ips": [{"address": "10.0.0.3/24", "interface": 1.0}]}, "ips[0].interface: expected an integer, got number 1.0"),
    ("1.0.0", {"ips": {"address": "10.0.0.3/24"}}, 'ips: expected an array, got object {"address": "10.0.0.3/24"}'),
    ("1.0.0", {"ips": [5]}, "ips[0]: expected an object, got number 5"),
    ("1.0.0", {"interfaces": [{"name": 5}]}, "interfaces[0].name: expected a string, got number 5"),
    ("1.1.0", {"interfaces": [{"mtu": "1500"}]}, 'interfaces[0].mtu: expected an integer, got string "1500"'),
    ("1.0.0", {"routes": [{"dst": "default"}]}, "routes[0].dst: invalid CIDR address: default"),
    ("0.3.1", {"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "routes[0].gw: invalid IP address: x"),
    ("1.0.0", {"dns": {"nameservers": "1.1.1.1"}}, 'dns.nameservers: expected an array of strings, got string "1.1.1.1"'),
    ("0.2.0", {"ip4": {"ip": "10.0.0.1"}}, "ip4.ip: invalid CIDR address: 10.0.0.1"),
    ("0.1.0", {"ip6": {"ip": "fd00::1/64", "gateway": "fd00::/64"}}, "ip6.gateway: invalid IP address: fd00::/64"),
    ("0.2.0", {"ip4": {"ip": "10.0.0.1/8", "routes": [{"dst": "nope"}]}}, "ip4.routes[0].dst: invalid CIDR address: nope"),
    ("1.0.0", {"cniVersion": 1}, "cniVersion: expected a string, got number 1"),
])
def test_invalid_content_is_named(version, prev, expected):
    with pytest.raises(DecodeFailure) as exc:
        decode_prev_result(prev, version)
    assert exc.value.msg == "could not parse prevResult: " + expected


def test_unsupported_config_version_and_non_object():
    with pytest.raises(DecodeFailure) as exc:
        decode_prev_result({}, "2.0.0")
    assert exc.value.msg == 'could not parse prevResult: unsupported CNI result version "2.0.0"'
    with pytest.raises(DecodeFailure) as exc:
        decode_prev_result([], "1.0.0")
    assert exc.value.msg == "could not parse prevResult: expected an object, got array"


def test_empty_gateway_and_missing_fields_are_fine():
    prev = {"ips": [{"address": "10.0.0.2/24", "gateway": ""}, {}], "interfaces": None, "routes": None}
    assert decode_prev_result(prev, "1.0.0")["ips"] == prev["ips"]


def test_result_family():
    assert [result_family(v) for v in ("", "0.1.0", "0.3.1", "1.1.0", "1.2.0")] == ["0.2.x", "0.2.x", "0.4.x", "1.x", None]


# --- container IP choice (reference §2.7, upstream "correctly parses an ADD config") ---

UPSTREAM_ADD_PREV = {
    "interfaces": [{"name": "host"}, {"name": "container", "sandbox": "netns"}],
    "ips": [
        {"version": "4", "address": "10.0.0.1/24", "gateway": "10.0.0.1", "interface": 0},
        {"version": "6", "address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1", "interface": 1},
        {"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1},
    ],
}


@pytest.mark.parametrize("version", ("0.3.0", "0.3.1", "0.4.0", "1.0.0"))
def test_upstream_add_config_ip_choice(version):
    echo = decode_prev_result(UPSTREAM_ADD_PREV, version)
    assert container_ips(echo, "container") == {4: "10.0.0.2/24", 6: "2001:db8:1::2/64"}
    # another ifname: index 1 is now "other container interface" -> nothing chosen
    assert container_ips(echo, "eth0") == {4: None, 6: None}


def test_missing_or_out_of_range_index_is_accepted():
    prev = {"interfaces": [{"name": "host"}],
            "ips": [{"version": "4", "address": "10.0.0.1/24", "gateway": "10.0.0.1"}]}
    assert container_ips(decode_prev_result(prev, "0.4.0"), "container") == {4: "10.0.0.1/24", 6: None}
    prev = {"interfaces": [{"name": "host"}],
            "ips": [{"address": "10.0.0.7/24", "interface": 5}, {"address": "fd00::7/64", "interface": -1}]}
    assert container_ips(prev, "container") == {4: "10.0.0.7/24", 6: "fd00::7/64"}


def test_first_acceptable_per_family_wins_and_host_bits_are_kept():
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}, {"name": "eth0"}],
            "ips": [{"address": "10.0.0.9/24", "interface": 1},        # no sandbox -> skipped
                    {"address": "10.0.0.10/24", "interface": 0},
                    {"address": "10.0.0.11/24", "interface": 0},
                    {"address": "2001:DB8::0:5/64", "interface": 0}]}
    assert container_ips(prev, "eth0") == {4: "10.0.0.10/24", 6: "2001:db8::5/64"}


def test_ipv4_mapped_counts_as_ipv4():
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "::ffff:10.0.0.2/120"}]}
    assert container_ips(prev, "eth0") == {4: "10.0.0.2/24", 6: None}


def test_020_shape_without_interface_index():
    echo = decode_prev_result(shape_for("0.2.0"), "0.2.0")
    assert container_ips(echo, "anything") == {4: "10.22.0.5/16", 6: "fd00::5/64"}
    assert container_ips({"ip4": {"ip": "10.1.0.1/16"}}, "eth0") == {4: "10.1.0.1/16", 6: None}


def test_entries_without_address_are_ignored():
    prev = {"cniVersion": "1.0.0", "ips": [{"interface": 0}, {"address": ""}, {"address": "10.0.0.3/8"}]}
    assert container_ips(prev, "eth0") == {4: "10.0.0.3/8", 6: None}


def test_case_insensitive_keys_in_result():
    prev = {"cniVersion": "1.0.0",
            "Interfaces": [{"Name": "eth0", "SANDBOX": "/run/netns/x"}],
            "IPs": [{"Address": "10.0.0.4/24", "Interface": 0}]}
    echo = decode_prev_result(prev, "1.0.0")
    assert container_ips(echo, "eth0") == {4: "10.0.0.4/24", 6: None}
