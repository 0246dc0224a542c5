"""Real traffic through nlportmap, with the full runtime chain, on both backends.

Every test runs bridge -> host-local -> nlportmap (exec'd like a runtime does)
in throw-away namespaces and sends real TCP/UDP.  Nothing outside them is touched.
Tests taking the ``backend`` fixture run once on nftables and once on iptables.
"""
import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe, udp_request

pytestmark = pytest.mark.root


@pytest.fixture(params=["nftables", "iptables"])
def backend(request):
    return request.param


def _conf(backend, **kw):
    return {"backend": backend, **kw}


def test_full_chain_tcp_udp_from_client(node, backend):
    pod = node.add_pod([port_mapping(8080, 80), port_mapping(5353, 53, "udp")], _conf(backend))
    assert pod.ip4 and pod.ip4.startswith("10.244.0.")
    with echo_server(pod.ns, proto="tcp", port=80), echo_server(pod.ns, proto="udp", port=53):
        r = tcp_probe(node.client, node.t.host_ip4, 8080)
        assert r.ok, r
        assert parse_echo(r.data).peer == node.t.client_ip4  # DNAT only, no masquerade
        rep = udp_request(node.client, node.t.host_ip4, 5353, b"q")
        assert rep is not None and parse_echo(rep).peer == node.t.client_ip4
        # an unmapped port is not forwarded
        assert not tcp_probe(node.client, node.t.host_ip4, 8082, timeout=1).ok


def test_host_ip_restricted_mapping_answers_only_there(node, backend):
    node.host.ip("addr", "add", "10.99.0.3/24", "dev", "eth0")
    pod = node.add_pod([port_mapping(8081, 80, host_ip=node.t.host_ip4)], _conf(backend))
    with echo_server(pod.ns, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8081).ok
        other = tcp_probe(node.client, "10.99.0.3", 8081, timeout=1)
        assert other.status == "refused", other  # reached the node itself, not the pod


def test_localhost_and_node_ip_from_the_node(node, backend):
    pod = node.add_pod([port_mapping(8080, 80)], _conf(backend))
    with echo_server(pod.ns, proto="tcp", port=80):
        r = tcp_probe(node.host, "127.0.0.1", 8080)
        assert r.ok, r
        # 127.0.0.1 cannot leave the node: it was masqueraded to the bridge address
        assert parse_echo(r.data).peer == "10.244.0.1"
        assert node.host.sysctl("net.ipv4.conf.cni0.route_localnet").strip() == "1"
        assert tcp_probe(node.host, node.t.host_ip4, 8080).ok  # output hook, node's own IP


def test_hairpin_pod_to_its_own_host_port(node, backend):
    pod = node.add_pod([port_mapping(8080, 80)], _conf(backend))
    with echo_server(pod.ns, proto="tcp", port=80):
        r = tcp_probe(pod.ns, node.t.host_ip4, 8080)
        assert r.ok, r
        assert parse_echo(r.data).peer == "10.244.0.1"  # hairpin is masqueraded


def test_ipv6_tcp_and_udp(node, backend):
    pod = node.add_pod([port_mapping(8080, 80), port_mapping(5353, 53, "udp")], _conf(backend))
    assert pod.ip6
    with echo_server(pod.ns, proto="tcp", port=80, family=6), \
            echo_server(pod.ns, proto="udp", port=53, family=6):
        r = tcp_probe(node.client, node.t.host_ip6, 8080)
        assert r.ok, r
        assert parse_echo(r.data).peer == node.t.client_ip6
        assert udp_request(node.client, node.t.host_ip6, 5353, b"q6") is not None
        assert tcp_probe(node.host, node.t.host_ip6, 8080).ok


def test_two_pods_del_one_leaves_other_working(node, backend):
    a = node.add_pod([port_mapping(8080, 80)], _conf(backend))
    b = node.add_pod([port_mapping(8090, 80)], _conf(backend))
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"), \
            echo_server(b.ns, proto="tcp", port=80, reply_prefix=b"B:"):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).data.startswith(b"A:")
        assert tcp_probe(node.client, node.t.host_ip4, 8090).data.startswith(b"B:")
        node.del_pod(a)
        assert not tcp_probe(node.client, node.t.host_ip4, 8080, timeout=1).ok
        r = tcp_probe(node.client, node.t.host_ip4, 8090)
        assert r.ok and r.data.startswith(b"B:")
        assert node.forwards_of(a.cid) == []
        assert node.forwards_of(b.cid) != []


def test_after_del_traffic_stops_and_nothing_remains(node, backend):
    pod = node.add_pod([port_mapping(8080, 80), port_mapping(5353, 53, "udp")], _conf(backend))
    assert len(node.forwards_of(pod.cid)) == 4  # 2 mappings x 2 families
    if backend == "nftables":
        assert len(node.owned_by(pod.cid)) == 4 + 1 + 2  # + masq v6, masq v4 (hairpin, localhost)
    with echo_server(pod.ns, proto="tcp", port=80), echo_server(pod.ns, proto="udp", port=53):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).ok
        node.del_pod(pod)
        assert tcp_probe(node.client, node.t.host_ip4, 8080, timeout=1).status == "refused"
        assert udp_request(node.client, node.t.host_ip4, 5353, b"x", timeout=1) is None
    assert node.forwards_of(pod.cid) == []
    assert pod.cid not in node.ruleset()
    if backend == "iptables":
        assert pod.cid not in node.host.run("iptables-save", "-t", "nat", text=True).stdout


def test_port_taken_over_by_newer_pod_survives_del_of_older(node, backend):
    """Upstream: the older rule keeps matching and DEL of either removes only its own rules.
    nlportmap: the newest ADD owns the port; DEL of the older pod must not break it."""
    a = node.add_pod([port_mapping(8080, 80)], _conf(backend))
    b = node.add_pod([port_mapping(8080, 80)], _conf(backend))
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"), \
            echo_server(b.ns, proto="tcp", port=80, reply_prefix=b"B:"):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).data.startswith(b"B:")
        node.del_pod(a)
        r = tcp_probe(node.client, node.t.host_ip4, 8080)
        assert r.ok and r.data.startswith(b"B:")


def test_masq_all_masquerades_client_traffic(node, backend):
    pod = node.add_pod([port_mapping(8080, 80)], _conf(backend, masqAll=True))
    with echo_server(pod.ns, proto="tcp", port=80):
        r = tcp_probe(node.client, node.t.host_ip4, 8080)
        assert r.ok and parse_echo(r.data).peer == "10.244.0.1"


def test_conditions_restrict_which_traffic_is_forwarded(node):
    pod = node.add_pod([port_mapping(8080, 80)], {"conditionsV4": ["ip", "saddr", "!=", node.t.client_ip4]})
    with echo_server(pod.ns, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8080, timeout=1).status == "refused"
        assert tcp_probe(node.host, node.t.host_ip4, 8080).ok  # the node's own traffic still matches
    # conditions are table-wide (like upstream): a later ADD with an allowing set replaces them
    pod2 = node.add_pod([port_mapping(8090, 80)], {"conditionsV4": ["ip saddr { 10.99.0.0/24, 10.244.0.0/24 }"]})
    with echo_server(pod2.ns, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8090).ok


def test_snat_false_installs_no_masquerade(node):
    pod = node.add_pod([port_mapping(8080, 80)], {"snat": False})
    kinds = {k[1] for k, _ in node.owned_by(pod.cid)}
    assert kinds == {"hostports"}
    with echo_server(pod.ns, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).ok
