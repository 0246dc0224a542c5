"""Security (issue 5, item 5): what nlportmap must never forward, with real packets.

* Traffic *forwarded through* the node to a non-local address (a pod IP, any
  other address) on a mapped host port is not captured: DNAT applies only to
  the node's own addresses (``fib daddr type local``).
* Packets to 127.0.0.0/8 arriving on a non-loopback interface are dropped by
  ``localnet_guard`` (CVE-2020-8558): nlportmap itself sets ``route_localnet=1``
  on the bridge (for 127.0.0.1:hostPort from the node), which would otherwise
  let pods reach the node's localhost services.  Hand-made frames (AF_PACKET in
  the sender's namespace, so the sender's own routing cannot divert them to its
  lo) are sent with the next hop's MAC; each test also proves the packet *does*
  get through once the guard is gone, so the negative result means something.

Control sockets: the daemon's peer check (uid 0 only, same netns) is tested in
``test_daemon.py`` (``test_non_root_peer_is_refused``, ``test_daemon_in_another_netns_is_refused``).
"""
from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe, udp_probe

pytestmark = pytest.mark.root


# --------------------------------------------------------------------------- non-local


def test_forwarded_traffic_to_a_pod_ip_on_a_mapped_port_is_not_captured(node):
    p = node.add_pod([port_mapping(8080, 80), port_mapping(5353, 53, "udp")])
    q = node.add_pod([])
    with echo_server(p.ns, proto="tcp", port=80, reply_prefix=b"DNAT:"), \
            echo_server(p.ns, proto="tcp", port=8080, reply_prefix=b"DIRECT:"), \
            echo_server(p.ns, proto="tcp", port=80, family=6, reply_prefix=b"DNAT6:"), \
            echo_server(p.ns, proto="tcp", port=8080, family=6, reply_prefix=b"DIRECT6:"), \
            echo_server(p.ns, proto="udp", port=53, reply_prefix=b"DNAT:"), \
            echo_server(p.ns, proto="udp", port=5353, reply_prefix=b"DIRECT:"):
        # the mapping is live: the node's own address is DNATed
        assert parse_echo(tcp_probe(node.client, node.t.host_ip4, 8080).data).prefix == b"DNAT:"
        # routed through the node to the pod IP (client -> node -> cni0): untouched
        for addr, want in ((p.ip4, b"DIRECT:"), (p.ip6, b"DIRECT6:")):
            r = tcp_probe(node.client, addr, 8080)
            assert r.ok, (addr, r)
            e = parse_echo(r.data)
            assert (e.prefix, e.peer) == (want, node.t.client_ip4 if ":" not in addr else node.t.client_ip6)
        r = udp_probe(node.client, p.ip4, 5353)
        assert r.ok and parse_echo(r.data).prefix == b"DIRECT:", r
        # pod to pod across the bridge (br_netfilter hands these to the ip hooks): untouched
        r = tcp_probe(q.ns, p.ip4, 8080)
        assert r.ok and parse_echo(r.data).prefix == b"DIRECT:", r


def test_forwarded_traffic_to_another_address_is_not_natted(node):
    node.add_pod([port_mapping(8080, 80)])
    # nobody has 10.244.0.200: the SYN is routed towards cni0 and stays unanswered
    assert not tcp_probe(node.client, "10.244.0.200", 8080, timeout=0.5).ok
    out = node.host.run("conntrack", "-L", "-p", "tcp", "-d", "10.244.0.200").stdout
    entries = [line for line in out.splitlines() if "dport=8080" in line]
    assert entries, out
    for line in entries:
        # reply direction still comes from the address the client chose: no DNAT
        assert re.search(r"\[UNREPLIED\] src=10\.244\.0\.200 dst=10\.99\.0\.2 sport=8080 ", line), line


# --------------------------------------------------------------------------- 127.0.0.0/8


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp_frame(dst_mac: bytes, src_mac: bytes, src: str, dst: str, sport: int, dport: int,
               payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # IPv4: checksum optional
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def _mac(ns, ifname: str) -> bytes:
    return bytes.fromhex(ns.ip("link", "show", ifname, json_out=True)[0]["address"].replace(":", ""))


def _send_raw(ns, ifname: str, dst_mac: bytes, src: str, dst: str, dport: int, n: int, tag: bytes) -> None:
    """``n`` UDP datagrams src -> dst:dport, written straight onto ``ifname`` of ``ns``."""
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, 0))
        src_mac = _mac(ns, ifname)
        for i in range(n):
            s.send(_udp_frame(dst_mac, src_mac, src, dst, 40000 + i, dport, tag + b"%d" % i, 0x4000 + i))
    finally:
        s.close()


def _guard_packets(node) -> int:
    text = node.host.run("nft", "list", "chain", "ip", "nlportmap", "localnet_guard").stdout
    m = re.search(r'iifname != "lo" ip daddr 127\.0\.0\.0/8 counter packets (\d+) bytes \d+ drop', text)
    assert m, text
    return int(m.group(1))


def _drain(sock: socket.socket, wait: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        sock.settimeout(left)
        try:
            got.append(sock.recv(2048))
        except TimeoutError:
            return got


def test_pod_cannot_reach_node_localhost_services_through_the_bridge(node):
    """nlportmap set route_localnet=1 on cni0; a pod's packets to 127.0.0.1 must still
    not reach a service the node binds to 127.0.0.1 only."""
    p = node.add_pod([port_mapping(8080, 80)])
    assert node.host.sysctl("net/ipv4/conf/cni0/route_localnet") == "1"
    svc = node.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        svc.bind(("127.0.0.1", 9999))
        gw_mac = _mac(node.host, "cni0")
        before = _guard_packets(node)
        _send_raw(p.ns, "eth0", gw_mac, p.ip4, "127.0.0.1", 9999, 5, b"attack")
        assert _drain(svc, 1.0) == []
        assert _guard_packets(node) - before == 5
        # the control: the same frames without the guard do reach the service
        node.host.run("nft", "flush", "chain", "ip", "nlportmap", "localnet_guard")
        _send_raw(p.ns, "eth0", gw_mac, p.ip4, "127.0.0.1", 9999, 3, b"control")
        assert sorted(_drain(svc, 2.0)) == [b"control0", b"control1", b"control2"]
    finally:
        svc.close()


def test_outside_packets_to_127_0_0_1_on_a_mapped_port_are_dropped(node):
    """From the client through the node's eth0 to 127.0.0.1:hostPort: without the guard
    the DNAT would hand it to the pod (127.0.0.1 is a local address for the fib match)."""
    p = node.add_pod([port_mapping(5353, 53, "udp")])
    node_mac = _mac(node.host, "eth0")
    with echo_server(p.ns, proto="udp", port=53) as srv:
        before = _guard_packets(node)
        _send_raw(node.client, "eth0", node_mac, node.t.client_ip4, "127.0.0.1", 5353, 4, b"attack")
        time.sleep(1.0)  # bounded wait for a hit that must not come
        assert [h for h in srv.hits() if h.payload.startswith(b"attack")] == []
        assert _guard_packets(node) - before == 4
        out = node.host.run("conntrack", "-L", "-p", "udp", "-d", "127.0.0.1").stdout
        assert "dport=5353" not in out  # dropped before conntrack even saw it (priority -300)
        node.host.run("nft", "flush", "chain", "ip", "nlportmap", "localnet_guard")
        _send_raw(node.client, "eth0", node_mac, node.t.client_ip4, "127.0.0.1", 5353, 2, b"control")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len([h for h in srv.hits() if h.payload.startswith(b"control")]) < 2:
            time.sleep(0.05)
        assert sorted(h.payload for h in srv.hits() if h.payload.startswith(b"control")) == [b"control0", b"control1"]
