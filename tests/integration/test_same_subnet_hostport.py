"""Issue 12.1 reproduced from outside: the plugin exec'd as a runtime does (bridge ->
host-local -> nlportmap, CNI env + stdin), real traffic, both backends.

Another pod on the same bridge uses a hostPort (node bridge 10.42.0.1/24,
``net.bridge.bridge-nf-call-iptables=0``): without masquerading traffic whose source is
in the container's subnet, pod1 answers pod2 straight over the bridge and pod2 drops
the reply.
"""
import contextlib

import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe
from nlpm_helpers import EXE, Node

pytestmark = pytest.mark.root


@pytest.fixture(params=["nftables", "iptables"])
def backend(request):
    return request.param


@pytest.fixture
def node42(topology_factory) -> Node:
    n = Node(topology_factory(pod_subnet4="10.42.0.0/24", pod_subnet6="fd00:42::/64",
                              plugin_paths={"portmap": EXE}))
    # only inside the node namespace: bridged frames skip netfilter, as on many nodes
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        with contextlib.suppress(Exception):  # br_netfilter not loaded: bridged frames skip netfilter anyway
            n.host.sysctl(key, 0)
    return n


def test_other_pod_on_same_bridge_reaches_host_port(node42, backend):
    node = node42
    pod1 = node.add_pod([port_mapping(8500, 8500)], {"backend": backend})
    pod2 = node.add_pod([], {"backend": backend})
    assert pod1.ip4.startswith("10.42.0.") and pod2.ip4.startswith("10.42.0.")
    with echo_server(pod1.ns, proto="tcp", port=8500), echo_server(pod1.ns, proto="tcp", port=8500, family=6):
        r = tcp_probe(pod2.ns, node.t.host_ip4, 8500, timeout=2)
        assert r.ok, r
        assert parse_echo(r.data).peer == "10.42.0.1"  # masqueraded to the bridge address
        r6 = tcp_probe(pod2.ns, node.t.host_ip6, 8500, timeout=2)
        assert r6.ok, r6
        assert parse_echo(r6.data).peer != pod2.ip6
        # still: hairpin, the node's 127.0.0.1, and a client outside keeps its address
        r = tcp_probe(pod1.ns, node.t.host_ip4, 8500)
        assert r.ok and parse_echo(r.data).peer == "10.42.0.1", r
        assert tcp_probe(node.host, "127.0.0.1", 8500).ok
        r = tcp_probe(node.client, node.t.host_ip4, 8500)
        assert r.ok and parse_echo(r.data).peer == node.t.client_ip4, r
    node.del_pod(pod1)
    if backend == "nftables":
        assert node.owned_by(pod1.cid) == [] and node.manifest_of(pod1.cid) == []


def test_other_pod_on_same_bridge_masq_all_and_snat_false(node42):
    node = node42
    pod1 = node.add_pod([port_mapping(8500, 8500)], {"masqAll": True})
    pod2 = node.add_pod([], {})
    with echo_server(pod1.ns, proto="tcp", port=8500):
        r = tcp_probe(pod2.ns, node.t.host_ip4, 8500, timeout=2)
        assert r.ok and parse_echo(r.data).peer == "10.42.0.1", r
    node.del_pod(pod1)
    pod3 = node.add_pod([port_mapping(8501, 8500)], {"snat": False})
    assert {k[1] for k, _ in node.owned_by(pod3.cid)} == {"hostports"}  # no masquerade at all


def test_state_of_layout_3_keeps_working_and_is_removed(node):
    """A node upgraded from layout 3: its pods have ``pod . pod`` in masq_pairs and no
    masq_nets.  The next ADD rewrites the skeleton; the old pod's hairpin still works
    and its DEL removes the old element (found from its pod IP, no prevResult)."""
    old = node.add_pod([port_mapping(8080, 80)])
    ip = old.ip4
    comment = next(e[2] for k, e in node.owned_by(old.cid) if k[1] == "masq_nets")
    h = node.host
    h.run("nft", "flush", "chain", "ip", "nlportmap", "postrouting")
    h.run("nft", "delete", "set", "ip", "nlportmap", "masq_nets")
    h.run("nft", "add", "element", "ip", "nlportmap", "masq_pairs", f'{{ {ip} . {ip} comment "{comment}" }}')
    new = node.add_pod([port_mapping(8090, 80)])  # rewrites the skeleton (layout 4)
    assert "masq_nets" in h.run("nft", "list", "table", "ip", "nlportmap", text=True).stdout
    with echo_server(old.ns, proto="tcp", port=80), echo_server(new.ns, proto="tcp", port=80):
        r = tcp_probe(old.ns, node.t.host_ip4, 8080)
        assert r.ok and parse_echo(r.data).peer == "10.244.0.1", r
        r = tcp_probe(old.ns, node.t.host_ip4, 8090)  # to the other pod on the bridge
        assert r.ok and parse_echo(r.data).peer == "10.244.0.1", r
    node.t.cni_chain_del(old.ns, old.cid)
    assert node.owned_by(old.cid) == []
    assert node.owned_by(new.cid) != []
