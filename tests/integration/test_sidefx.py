"""Side effects of ADD: stale UDP conntrack entries and route_localnet.

The stale-entry scenario is the one upstream's integration test guards: a UDP
flow that existed before the DNAT (here: answered by a process on the node)
keeps its conntrack entry, so the same 5-tuple would never reach the pod.
"""
import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, udp_request

pytestmark = pytest.mark.root


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel-filter", "dump-and-delete"])
def test_stale_udp_conntrack_entry_is_deleted_on_add(node, fallback):
    env = {"NLPORTMAP_CT_FALLBACK": "1"} if fallback else None
    # conntrack only tracks once some rule needs it: a first pod creates our nat table
    node.add_pod([port_mapping(7000, 70)], env=env)
    with echo_server(node.host, proto="udp", port=5353, reply_prefix=b"NODE:"):
        rep = udp_request(node.client, node.t.host_ip4, 5353, b"a", sport=40000)
        assert rep and rep.startswith(b"NODE:")
        ct = node.host.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "5353", check=False, text=True)
        assert "dport=5353" in ct.stdout  # the stale entry exists
        pod = node.add_pod([port_mapping(5353, 53, "udp")], env=env)
        with echo_server(pod.ns, proto="udp", port=53, reply_prefix=b"POD:"):
            rep = udp_request(node.client, node.t.host_ip4, 5353, b"b", sport=40000)
            assert rep and rep.startswith(b"POD:"), rep
            assert parse_echo(rep).peer == node.t.client_ip4


def test_unrelated_conntrack_entries_survive(node):
    node.add_pod([port_mapping(7000, 70)])
    with echo_server(node.host, proto="udp", port=6000):
        assert udp_request(node.client, node.t.host_ip4, 6000, b"keep", sport=40001)
        node.add_pod([port_mapping(5353, 53, "udp")])
        ct = node.host.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "6000", check=False, text=True)
        assert "dport=6000" in ct.stdout


def test_route_localnet_only_on_the_pod_interface(node):
    node.add_pod([port_mapping(8080, 80)])
    assert node.host.sysctl("net.ipv4.conf.cni0.route_localnet").strip() == "1"
    assert node.host.sysctl("net.ipv4.conf.eth0.route_localnet").strip() == "0"
    assert node.host.sysctl("net.ipv4.conf.all.route_localnet").strip() == "0"


def test_snat_false_leaves_route_localnet_alone(node):
    node.add_pod([port_mapping(8080, 80)], {"snat": False})
    assert node.host.sysctl("net.ipv4.conf.cni0.route_localnet").strip() == "0"
