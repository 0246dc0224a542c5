"""A node set up like kube-proxy in IPVS mode (or kube-router): ClusterIPs are local
addresses on ``kube-ipvs0``, and hostPort mappings must not capture them (issue 15).

Node N: bridge ``br0`` 10.244.1.1/24 (fd00:244::1/64) with pods P (.5, the mapped one)
and P2 (.6); uplink 10.99.0.1 (fd00:99::1) to a client; 10.96.0.1/32 (fd00:96::1/128)
on ``kube-ipvs0``; kube-proxy's early ``ACCEPT`` for the VIP in iptables' nat
PREROUTING/OUTPUT (KUBE-SERVICES).  A listener on N's port 443 answers "apiserver:",
one on P's port 8443 "ingress:".  nlportmap is exec'd in N like a runtime does, with
the issue's stdin (hostPort 443 -> 8443, no hostIP).
"""
from __future__ import annotations

import contextlib

import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe
from nlpm_helpers import EXE, Node, netconf, prev_result

pytestmark = pytest.mark.root

VIP4, VIP6 = "10.96.0.1", "fd00:96::1"
GW4, GW6 = "10.244.1.1", "fd00:244::1"
P_IP4, P_IP6 = "10.244.1.5", "fd00:244::5"


@pytest.fixture
def ipvs(topology_factory):
    t = topology_factory(pod_subnet4="10.244.1.0/24", pod_subnet6="fd00:244::/64", plugin_paths={"portmap": EXE})
    node = Node(t)
    h = t.host
    # A real kube-ipvs0 is a dummy interface; this kernel has no dummy module, so a veth
    # pair named kube-ipvs0 stands in (up, so that the IPv6 address gets its local route).
    h.ip("link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kipvs-peer")
    h.ip("addr", "add", f"{VIP4}/32", "dev", "kube-ipvs0")
    h.ip("addr", "add", f"{VIP6}/128", "dev", "kube-ipvs0", "nodad")
    h.ip("link", "set", "kipvs-peer", "up")
    h.ip("link", "set", "kube-ipvs0", "up")
    for cmd, vip in (("iptables", VIP4), ("ip6tables", VIP6)):  # kube-proxy's protection
        h.run(cmd, "-t", "nat", "-N", "KUBE-SERVICES")
        h.run(cmd, "-t", "nat", "-I", "PREROUTING", "1", "-j", "KUBE-SERVICES")
        h.run(cmd, "-t", "nat", "-I", "OUTPUT", "1", "-j", "KUBE-SERVICES")
        h.run(cmd, "-t", "nat", "-A", "KUBE-SERVICES", "-d", vip, "-p", "tcp", "--dport", "443", "-j", "ACCEPT")
    p = t.add_pod_manual("pod", ip4=P_IP4, ip6=P_IP6, bridge="br0")
    p2 = t.add_pod_manual("pod", ip4="10.244.1.6", ip6="fd00:244::6", bridge="br0")
    return node, p, p2


@contextlib.contextmanager
def listeners(node, p, family=4):
    with echo_server(node.host, proto="tcp", port=443, family=family, reply_prefix=b"apiserver:"), \
            echo_server(p, proto="tcp", port=8443, family=family, reply_prefix=b"ingress:"):
        yield


def who(ns, addr, port=443) -> str:
    r = tcp_probe(ns, addr, port)
    return parse_echo(r.data).prefix.decode().rstrip(":") if r.ok else r.status


def add(node, p, mappings, *, ip6=False, cid="ingress1", **extra):
    prev = prev_result(f"{P_IP4}/24", f"{P_IP6}/64" if ip6 else None, version="0.3.1", sandbox=p.path)
    conf = netconf(mappings, prev, version="0.3.1", name="kube-router", **extra)
    rc, out, err = node.exec("ADD", conf, cid=cid, netns=p.path)
    assert rc == 0, (out, err)
    return conf


def proxy_vips(node, fam=4) -> str:
    return node.host.run("nft", "list", "set", "ip" if fam == 4 else "ip6", "nlportmap", "proxy_vips").stdout


@pytest.mark.parametrize("backend", [None, "iptables"])
def test_hostport_does_not_capture_a_clusterip(ipvs, backend):
    """The issue's reproduction: default config (nftables) and ``"backend": "iptables"``."""
    node, p, p2 = ipvs
    extra = {"backend": backend} if backend else {}
    with listeners(node, p):
        for ns in (node.host, p, p2):
            assert who(ns, VIP4) == "apiserver"
        conf = add(node, p, [port_mapping(443, 8443)], **extra)
        # the ClusterIP keeps reaching the API server, from the node, the mapped pod and another pod
        for ns in (node.host, p, p2):
            assert who(ns, VIP4) == "apiserver", ns
        # the node's own addresses are forwarded as before: bridge gateway (same-bridge pod,
        # hairpin, the node itself), the uplink (the node itself, a client outside)
        assert who(p2, GW4) == "ingress"
        assert who(p, GW4) == "ingress"
        assert who(node.host, GW4) == "ingress"
        assert who(node.host, node.t.host_ip4) == "ingress"
        assert who(node.client, node.t.host_ip4) == "ingress"
        if backend is None:
            assert VIP4 in proxy_vips(node)
        else:  # like upstream: our jumps are appended after kube-proxy's, whose ACCEPT wins
            for chain in ("PREROUTING", "OUTPUT"):
                jumps = [ln.split()[-1] for ln in node.host.run(
                    "iptables", "-t", "nat", "-S", chain).stdout.splitlines() if " -j " in ln]
                assert jumps.index("KUBE-SERVICES") < jumps.index("CNI-HOSTPORT-DNAT"), jumps
        rc, out, err = node.exec("DEL", conf, cid="ingress1", netns=p.path)
        assert rc == 0, (out, err)
        assert who(p2, VIP4) == "apiserver"
        assert who(p2, GW4) == "apiserver"  # N's own listener again: the mapping is gone


def test_hostport_does_not_capture_an_ipv6_clusterip(ipvs):
    node, p, p2 = ipvs
    with listeners(node, p, family=6):
        for ns in (node.host, p, p2):
            assert who(ns, VIP6) == "apiserver"
        add(node, p, [port_mapping(443, 8443)], ip6=True)
        for ns in (node.host, p, p2):
            assert who(ns, VIP6) == "apiserver", ns
        assert who(p2, GW6) == "ingress"
        assert who(p, GW6) == "ingress"
        assert who(node.host, node.t.host_ip6) == "ingress"
        assert who(node.client, node.t.host_ip6) == "ingress"
        assert VIP6 in proxy_vips(node, 6)


def test_explicit_host_ip_on_a_clusterip_still_forwards(ipvs):
    """``hostIP`` naming an address on kube-ipvs0 is the user's explicit choice: forwarded
    (nftables: the hostIP map is looked up before the proxy_vips return)."""
    node, p, p2 = ipvs
    with listeners(node, p), echo_server(node.host, proto="tcp", port=444, reply_prefix=b"apiserver:"):
        add(node, p, [port_mapping(443, 8443, host_ip=VIP4), port_mapping(444, 8443)])
        for ns in (node.host, p2):
            assert who(ns, VIP4) == "ingress"          # explicit hostIP = the VIP
            assert who(ns, VIP4, 444) == "apiserver"   # any-address mapping: not on the VIP
            assert who(ns, GW4, 444) == "ingress"      # ... but on the node's own address


def test_vips_added_later_are_excluded_from_the_next_add(ipvs):
    """Without the daemon the set is refreshed at each ADD: a ClusterIP created after the
    node's last ADD is capturable until the next one (README, "Which addresses count")."""
    node, p, p2 = ipvs
    with listeners(node, p):
        add(node, p, [port_mapping(443, 8443)])
        node.host.ip("addr", "add", "10.96.0.2/32", "dev", "kube-ipvs0")
        assert who(p2, "10.96.0.2") == "ingress"  # the documented gap
        add(node, p, [port_mapping(443, 8443)])   # any ADD on the node (here a re-ADD) refreshes
        assert who(p2, "10.96.0.2") == "apiserver"
        node.host.ip("addr", "del", "10.96.0.2/32", "dev", "kube-ipvs0")
        add(node, p, [port_mapping(443, 8443)])
        assert "10.96.0.2" not in proxy_vips(node) and VIP4 in proxy_vips(node)


def test_empty_service_proxy_interfaces_restores_the_old_capture(ipvs):
    """``serviceProxyInterfaces: []`` turns the exclusion off: every local address counts as
    the node's, and an any-address hostPort captures ClusterIP:hostPort again (the outage
    of issue 15).  Only for nodes without a service proxy using such interfaces."""
    node, p, p2 = ipvs
    with listeners(node, p):
        add(node, p, [port_mapping(443, 8443)])
        assert who(p2, VIP4) == "apiserver"
        add(node, p, [port_mapping(443, 8443)], serviceProxyInterfaces=[])
        assert VIP4 not in proxy_vips(node)
        for ns in (node.host, p, p2):
            assert who(ns, VIP4) == "ingress"
        # another name: only that interface's addresses are excluded
        node.host.ip("link", "add", "svc-vips", "type", "veth", "peer", "name", "svc-peer")
        node.host.ip("addr", "add", "10.96.5.5/32", "dev", "svc-vips")
        add(node, p, [port_mapping(443, 8443)], serviceProxyInterfaces=["svc-vips"])
        assert who(p2, VIP4) == "ingress"
        assert who(p2, "10.96.5.5") == "apiserver"


def test_the_daemon_excludes_a_clusterip_created_between_adds(ipvs):
    """With the daemon running, a ClusterIP that appears on kube-ipvs0 after the node's
    last ADD is excluded without another ADD (nlportmap.vipwatch), and a removed one
    leaves the set."""
    import os
    import subprocess
    import sys
    import tempfile
    import time
    node, p, p2 = ipvs
    d = tempfile.mkdtemp(prefix="nlpm-vip-")
    os.chmod(d, 0o700)
    log = os.path.join(d, "daemon.log")
    with open(log, "w") as f:
        proc = node.host.popen(sys.executable, "-m", "nlportmap", "daemon", "--socket", os.path.join(d, "s"),
                               env=dict(os.environ), stdout=f, stderr=subprocess.STDOUT)
    try:
        def text() -> str:
            with open(log) as f:
                return f.read()

        deadline = time.monotonic() + 20
        while "self-healing on" not in text():
            assert proc.poll() is None and time.monotonic() < deadline, text()
            time.sleep(0.02)
        with listeners(node, p):
            add(node, p, [port_mapping(443, 8443)])
            node.host.ip("addr", "add", "10.96.0.2/32", "dev", "kube-ipvs0")
            deadline = time.monotonic() + 3
            while "10.96.0.2" not in proxy_vips(node):
                assert time.monotonic() < deadline, (proxy_vips(node), text())
                time.sleep(0.02)
            assert who(p2, "10.96.0.2") == "apiserver"
            assert who(p2, GW4) == "ingress"  # the node's own addresses still forward
            node.host.ip("addr", "del", "10.96.0.2/32", "dev", "kube-ipvs0")
            deadline = time.monotonic() + 3
            while "10.96.0.2" in proxy_vips(node):
                assert time.monotonic() < deadline, (proxy_vips(node), text())
                time.sleep(0.02)
            assert VIP4 in proxy_vips(node)
    finally:
        proc.terminate()
        proc.wait(10)
        import shutil
        shutil.rmtree(d, ignore_errors=True)
