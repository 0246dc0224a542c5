"""Self-test of netns-fixtures against the real Debian bridge + host-local plugins.

No portmap here: these tests check the harness (topology, libcni-like chain
execution, echo servers/clients, teardown), not the plugin under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns_fixtures import (CNIError, Topology, cleanup_stale, echo_server, new_container_id,
                            parse_echo, port_mapping, tcp_probe, tcp_request, udp_probe,
                            udp_request)
from netns_fixtures.netns import list_namespaces
from netns_fixtures.pytest_plugin import requires_root

pytestmark = requires_root

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "netns-fixtures"


def root_ns_snapshot() -> dict[str, str]:
    """What must never change in the caller's namespace."""
    def sh(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    def rd(p: str) -> str:
        return Path(p).read_text().strip()

    return {
        "links": sh("ip", "-br", "link"),
        "addrs": sh("ip", "-br", "addr"),
        "ip_forward": rd("/proc/sys/net/ipv4/ip_forward"),
        "ip6_forwarding": rd("/proc/sys/net/ipv6/conf/all/forwarding"),
        "nft": hashlib.sha256(sh("nft", "list", "ruleset").encode()).hexdigest(),
    }


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_pod_via_bridge_and_host_local():
    before = root_ns_snapshot()
    pids: list[int] = []
    with Topology(ipv6=True) as t:
        names = [t.host.name, t.client.name]
        pod = t.add_netns("pod")
        names.append(pod.name)
        conf = t.make_conflist(None)  # bridge + host-local only
        assert conf["plugins"][0]["ipam"]["dataDir"].startswith(t.tmpdir)
        cid = new_container_id()
        result = t.cni_chain_add(pod, cid, plugins_conf=conf)

        # the result has the pod's v4+v6 addresses on the interface with `sandbox`
        ifaces = result["interfaces"]
        ips = {ip["address"]: ifaces[ip["interface"]] for ip in result["ips"]}
        assert set(ips) == {"10.244.0.2/24", "fd00:244::2/64"}
        for iface in ips.values():
            assert iface == {**iface, "name": "eth0", "sandbox": pod.path}
        assert (pod.ip4, pod.ip6) == ("10.244.0.2", "fd00:244::2")
        assert any(i["name"] == "cni0" and "sandbox" not in i for i in ifaces)

        # everything landed in our host namespace, nothing in the root one
        assert t.host.ip("link", "show", "cni0", check=False).returncode == 0
        assert t.host.sysctl("net.ipv4.ip_forward") == "1"
        assert os.listdir(os.path.join(t.tmpdir, "ipam", conf["name"]))

        t.cni_chain_check(pod, cid)
        assert "1.0.0" in t.cni.version("bridge")["supportedVersions"]

        with echo_server(pod, proto="tcp", port=80) as tcp4, \
                echo_server(pod, proto="udp", port=53) as udp4, \
                echo_server(pod, proto="tcp", port=80, family=6) as tcp6, \
                echo_server(pod, proto="udp", port=53, family=6, reply_prefix=b"v6:") as udp6:
            pids += [s.pid for s in (tcp4, udp4, tcp6, udp6)]
            r = parse_echo(tcp_request(t.host, pod.ip4, 80, b"hello"))
            assert (r.payload, r.peer) == (b"hello", "10.244.0.1")
            r = parse_echo(udp_request(t.host, pod.ip4, 53, b"dns?", sport=5300))
            assert (r.payload, r.peer, r.peer_port) == (b"dns?", "10.244.0.1", 5300)
            r = parse_echo(tcp_request(t.host, pod.ip6, 80))
            assert r.peer == "fd00:244::1"
            r = parse_echo(udp_request(t.host, pod.ip6, 53))
            assert (r.prefix, r.peer) == (b"v6:", "fd00:244::1")
            # routed from the outside namespace too (no NAT: the pod sees the client)
            assert parse_echo(tcp_request(t.client, pod.ip4, 80)).peer == t.client_ip4
            assert parse_echo(udp_request(t.client, pod.ip6, 53)).peer == t.client_ip6
            assert [h.peer for h in tcp4.hits()] == ["10.244.0.1", t.client_ip4]
            # refused and timeout are told apart
            assert tcp_probe(t.host, pod.ip4, 81).status == "refused"
            assert udp_probe(t.host, pod.ip4, 54, timeout=0.5).status == "refused"
            assert tcp_probe(t.host, "10.244.0.200", 80, timeout=0.3).status == "timeout"

        t.cni_chain_del(pod, cid)
        assert t.cni_result(cid) is None
        assert t.host.ip("link", "show", "dev", "eth0", check=False).returncode == 0
        assert pod.ip("link", "show", "eth0", check=False).returncode != 0  # veth gone
        assert not [f for f in os.listdir(os.path.join(t.tmpdir, "ipam", conf["name"]))
                    if f[0].isdigit() or ":" in f]  # addresses released
        tmpdir = t.tmpdir

    assert not set(names) & set(list_namespaces())
    assert all(gone(p) for p in pids)
    assert not os.path.exists(tmpdir)
    assert root_ns_snapshot() == before


def test_teardown_after_exception():
    seen: dict = {}
    with pytest.raises(RuntimeError, match="boom"), Topology() as t:
        pod = t.add_netns("pod")
        t.cni_chain_add(pod, new_container_id(), plugins_conf=t.make_conflist(None))
        srv = echo_server(pod, proto="tcp", port=0)  # not closed by the test
        seen = {"ns": [n.name for n in t.namespaces()], "pid": srv.pid, "tmp": t.tmpdir}
        raise RuntimeError("boom")
    assert not set(seen["ns"]) & set(list_namespaces())
    assert gone(seen["pid"])
    assert not os.path.exists(seen["tmp"])
    t.close()  # idempotent


def test_ipv4_only_and_echo_lifetime(topology_factory):
    t = topology_factory(ipv6=False, pod_subnet4="10.244.7.0/24")
    pod = t.add_netns("pod")
    result = t.cni_chain_add(pod, new_container_id(), plugins_conf=t.make_conflist(None))
    assert [ip["address"] for ip in result["ips"]] == ["10.244.7.2/24"]
    assert pod.ip6 is None
    srv = echo_server(pod, proto="tcp", port=0, lifetime=1)
    assert tcp_request(t.client, pod.ip4, srv.port) is not None
    deadline = time.monotonic() + 10
    while srv.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.alive(), "echo server outlived its lifetime"


RECORDER = """\
#!{python} -I
import json, os, sys
conf = json.load(sys.stdin)
with open(os.environ["REC_LOG"], "a") as f:
    f.write(json.dumps({{"conf": conf, "netns": os.readlink("/proc/self/ns/net"),
                        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    json.dump(conf["prevResult"], sys.stdout)
"""


def test_chain_semantics_like_libcni(tmp_path):
    """stdin/env/order/namespace of each plugin exec, observed by a recording plugin."""
    rec = tmp_path / "recorder"
    rec.write_text(RECORDER.format(python=sys.executable))
    rec.chmod(0o755)
    log = tmp_path / "log.jsonl"
    with Topology(plugin_paths={"recorder": str(rec)}) as t:
        pod = t.add_netns("pod")
        conf = t.make_conflist(None)
        conf["plugins"] += [
            {"type": "recorder", "tag": "a", "capabilities": {"portMappings": True},
             "runtimeConfig": {"static": 1}},
            {"type": "recorder", "tag": "b", "capabilities": {"bandwidth": True}},
        ]
        pm = [port_mapping(8080, 80), port_mapping(5353, 53, "udp")]
        cid = new_container_id()
        final = t.cni_chain_add(pod, cid, plugins_conf=conf, extra_env={"REC_LOG": str(log)},
                                capability_args={"portMappings": pm})
        t.cni_chain_check(pod, cid, extra_env={"REC_LOG": str(log)})
        t.cni_chain_del(pod, cid, extra_env={"REC_LOG": str(log)})
        host_ns = f"net:[{os.stat(t.host.path).st_ino}]"

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["env"]["CNI_COMMAND"], c["conf"]["tag"]) for c in calls] == [
        ("ADD", "a"), ("ADD", "b"), ("CHECK", "a"), ("CHECK", "b"), ("DEL", "b"), ("DEL", "a")]
    bridge_result = calls[0]["conf"]["prevResult"]
    assert any(i.get("sandbox") == pod.path for i in bridge_result["interfaces"])
    for c in calls:
        assert c["netns"] == host_ns  # ran in the topology's host namespace
        assert c["env"] == {"CNI_COMMAND": c["env"]["CNI_COMMAND"], "CNI_CONTAINERID": cid,
                            "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
                            "CNI_ARGS": "IgnoreUnknown=1", "CNI_PATH": "/usr/lib/cni"}
        assert (c["conf"]["name"], c["conf"]["cniVersion"]) == (conf["name"], "1.0.0")
        # capability args replace a static runtimeConfig, only where declared
        if c["conf"]["tag"] == "a":
            assert c["conf"]["runtimeConfig"] == {"portMappings": pm}
        else:
            assert "runtimeConfig" not in c["conf"]
        # ADD: previous plugin's result; CHECK/DEL: the cached final result
        assert c["conf"]["prevResult"] == (bridge_result if c["env"]["CNI_COMMAND"] == "ADD"
                                           else final)


def test_plugin_failure_is_reported(tmp_path):
    bad = tmp_path / "failer"
    bad.write_text("#!/bin/sh\ncat >/dev/null\necho 'some diagnostics' >&2\n"
                   "echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"boom\",\"details\":\"d\"}'\n"
                   "exit 1\n")
    bad.chmod(0o755)
    with Topology(ipv6=False, plugin_paths={"failer": str(bad)}) as t:
        pod = t.add_netns("pod")
        conf = t.make_conflist(None)
        conf["plugins"].append({"type": "failer"})
        cid = new_container_id()
        with pytest.raises(CNIError) as ei:
            t.cni_chain_add(pod, cid, plugins_conf=conf)
        e = ei.value
        assert (e.plugin, e.code, e.msg, e.details) == ("failer", 7, "boom", "d")
        assert "some diagnostics" in str(e) and '"prevResult"' in str(e)
        assert t.cni_result(cid) is None  # nothing cached after a failed ADD
        # a runtime now DELs the chain; failer fails DEL too, so DEL stops there
        with pytest.raises(CNIError):
            t.cni_chain_del(pod, cid)
        conf["plugins"].pop()
        t.cni_chain_del(pod, cid, plugins_conf=conf)  # bridge DEL without prevResult


DRIVER = """\
import json, sys, time
sys.path.insert(0, {fixtures!r})
from netns_fixtures import Topology, echo_server
t = Topology(prefix={prefix!r}).start()
pod = t.add_netns("pod")
srv = echo_server(pod, proto="udp", port=0, lifetime=30)
print(json.dumps({{"ns": [n.name for n in t.namespaces()], "pid": srv.pid,
                  "tmp": t.tmpdir}}), flush=True)
time.sleep(60)
"""


def _start_driver(prefix: str) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen([sys.executable, "-I", "-c",
                          DRIVER.format(fixtures=str(FIXTURES_DIR), prefix=prefix)],
                         stdout=subprocess.PIPE, text=True)
    info = json.loads(p.stdout.readline())
    assert set(info["ns"]) <= set(list_namespaces())
    return p, info


@pytest.fixture
def driver_prefix():
    """A prefix of our own, so that concurrent runs' sweeps cannot race these tests."""
    prefix = "nlpmt" + os.urandom(3).hex()
    yield prefix
    cleanup_stale(prefix)  # only if a test failed half-way


def test_sigterm_cleans_up(driver_prefix):
    p, info = _start_driver(driver_prefix)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == -signal.SIGTERM  # re-raised with the default action
    p.stdout.close()
    assert not set(info["ns"]) & set(list_namespaces())
    assert gone(info["pid"])
    assert not os.path.exists(info["tmp"])


def test_cleanup_stale_after_sigkill(topology, driver_prefix):
    p, info = _start_driver(driver_prefix)
    p.kill()
    p.wait(10)
    p.stdout.close()
    try:
        assert set(info["ns"]) <= set(list_namespaces())  # left behind
        assert sorted(cleanup_stale(driver_prefix)) == sorted(info["ns"])
        assert not set(info["ns"]) & set(list_namespaces())
        assert not os.path.exists(info["tmp"])
        # a live owner's namespaces survive a sweep over their prefix
        cleanup_stale(topology.prefix)
        assert topology.host.exists() and topology.client.exists()
    finally:
        # the orphaned echo server was started (indirectly) by this test: end it by PID
        if not gone(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)
