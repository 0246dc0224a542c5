"""Issue 12.2 reproduced from outside, both backends: DEL deletes the UDP conntrack entries
whose reply source is the pod and whose original destination port is one of its
hostPorts, so a listener the node opens on that port afterwards hears the same client
port at once (before, the entry kept pointing at the deleted pod until it expired).
"""
import pytest

from netns_fixtures import echo_server, port_mapping, udp_request

pytestmark = pytest.mark.root


@pytest.fixture(params=["nftables", "iptables"])
def backend(request):
    return request.param


def _ct_reply_src(node, ip):
    out = node.host.run("conntrack", "-L", "-p", "udp", check=False, text=True).stdout
    return [ln for ln in out.splitlines() if f"src={ip} " in ln.split("dport=", 1)[-1]]


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel-filter", "dump-and-delete"])
def test_del_removes_udp_conntrack_entries_of_the_pod(node, backend, fallback):
    env = {"NLPORTMAP_CT_FALLBACK": "1"} if fallback else None
    node.host.ip("addr", "add", "10.99.0.3/24", "dev", "eth0")
    pod = node.add_pod([port_mapping(8125, 8125, "udp", node.t.host_ip4)], {"backend": backend}, env=env)
    # the same host port on another node address: only the reply source tells the flows apart
    other = node.add_pod([port_mapping(8125, 8125, "udp", "10.99.0.3")], {"backend": backend}, env=env)
    with echo_server(pod.ns, proto="udp", port=8125, reply_prefix=b"POD:"), \
            echo_server(other.ns, proto="udp", port=8125, reply_prefix=b"OTHER:"):
        rep = udp_request(node.client, node.t.host_ip4, 8125, b"a", sport=40000)
        assert rep and rep.startswith(b"POD:"), rep
        rep = udp_request(node.client, "10.99.0.3", 8125, b"b", sport=40001)
        assert rep and rep.startswith(b"OTHER:"), rep
        assert _ct_reply_src(node, pod.ip4), "the flow is tracked"
        node.del_pod(pod, env=env)
    assert _ct_reply_src(node, pod.ip4) == []
    assert _ct_reply_src(node, other.ip4), "entries of other pods stay"
    with echo_server(node.host, proto="udp", port=8125, reply_prefix=b"NODE:"):
        rep = udp_request(node.client, node.t.host_ip4, 8125, b"c", sport=40000)
        assert rep and rep.startswith(b"NODE:"), rep


def test_del_without_prev_result_still_removes_conntrack_entries(node, backend):
    pod = node.add_pod([port_mapping(8125, 8125, "udp")], {"backend": backend})
    with echo_server(pod.ns, proto="udp", port=8125):
        assert udp_request(node.client, node.t.host_ip4, 8125, b"a", sport=40000)
        assert _ct_reply_src(node, pod.ip4)
        # what a runtime that lost its cache sends: the mappings, no prevResult
        conf = node.t.cni.build_conf(pod.conflist, pod.conflist["plugins"][-1], None,
                                     {"portMappings": pod.mappings})
        assert "prevResult" not in conf and conf["runtimeConfig"]["portMappings"]
        rc, _, err = node.exec("DEL", conf, cid=pod.cid, netns=pod.ns.path)
        assert rc == 0, err
    assert _ct_reply_src(node, pod.ip4) == []
