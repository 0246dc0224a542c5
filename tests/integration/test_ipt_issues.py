"""iptables backend, issue 16 items 1-2 and issue 12 items 3, 4, 6: run as a runtime would.

Every test execs the plugin (env vars + config on stdin) inside a throw-away node
namespace (``Node.exec``), with ``"backend": "iptables"``, and reads the rules back
with ``iptables-save`` / real traffic.  Tool availability is varied with a private
PATH directory (symlinks to the real tools, minus one, or logging wrappers in front
of them); nothing outside the test's namespaces is touched.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe, udp_request
from nlpm_helpers import EXE, Node, netconf, prev_result

pytestmark = pytest.mark.root

SBIN = "/usr/sbin"
FIREWALL_TOOL = re.compile(r"^(ip6?tables.*|nft|conntrack|xtables.*|ebtables.*|arptables.*)$")


# ------------------------------------------------------------------ helpers
def _bin_dir(tmp_path, name: str, *, missing=(), failing=(), log: str | None = None) -> str:
    """A PATH directory mirroring /usr/sbin: ``missing`` names left out, ``failing`` names
    replaced by a script that exits 1, and (with ``log``) every firewall tool wrapped by a
    script that appends its argv to ``log`` before exec-ing the real tool."""
    d = tmp_path / name
    d.mkdir()
    for entry in os.listdir(SBIN):
        if entry in missing:
            continue
        target = d / entry
        if entry in failing:
            target.write_text("#!/bin/sh\necho \"$0: simulated failure\" >&2\nexit 1\n")
            target.chmod(0o755)
        elif log and FIREWALL_TOOL.match(entry):
            target.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {log}\nexec {SBIN}/{entry} \"$@\"\n")
            target.chmod(0o755)
        else:
            target.symlink_to(os.path.join(SBIN, entry))
    return f"{d}:/usr/bin:/bin"


def _conf(maps, prev, **extra) -> dict:
    return netconf(maps, prev, name="ipt-issues", backend="iptables", **extra)


def _state(node: Node) -> dict[str, str]:
    """nat (both families) and raw (IPv4), counters zeroed, comments dropped."""
    out = {}
    for tool, table in (("iptables-save", "nat"), ("ip6tables-save", "nat"), ("iptables-save", "raw")):
        text = node.host.run(tool, "-t", table, text=True).stdout
        out[f"{tool} {table}"] = "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", ln)
                                           for ln in text.splitlines() if not ln.startswith("#"))
    return out


def _err(out: str) -> dict:
    return json.loads(out)


@pytest.fixture
def node_pm(topology_factory) -> Node:
    """Dual-stack node whose pods live in 10.88.0.0/16 and fd88::/64 (issue 16.1's addresses)."""
    return Node(topology_factory(plugin_paths={"portmap": EXE}, pod_subnet4="10.88.0.0/16",
                                 pod_subnet6="fd88::/64", prefix="nlpm-iptis"))


# ------------------------------------------------------------------ issue 16.1
def test_rejected_dual_stack_add_leaves_no_ipv4_rules(node_pm):
    node = node_pm
    t = node.t
    node.host.sysctl("net.ipv6.conf.all.forwarding", 1)
    pod_a = t.add_pod_manual("poda", ip4="10.88.0.7", ip6="fd88::7")
    pod_b = t.add_pod_manual("podb", ip4="10.88.0.6", ip6="fd88::6")
    maps = [port_mapping(8190, 80)]
    rc, out, err = node.exec("ADD", _conf(maps, prev_result(None, "fd88::7/64"), conflictPolicy="reject"),
                             cid="pod-a")
    assert rc == 0, (out, err)
    before = _state(node)
    with echo_server(pod_b, proto="tcp", port=80, reply_prefix=b"B:"), \
            echo_server(pod_a, proto="tcp", port=80, family=6, reply_prefix=b"A:"):
        rc, out, err = node.exec("ADD", _conf(maps, prev_result("10.88.0.6/16", "fd88::6/64"),
                                              conflictPolicy="reject"), cid="pod-b")
        assert rc == 1, (out, err)
        e = _err(out)
        assert e["code"] == 7 and 'container "pod-a"' in e["msg"], e
        # nothing of B anywhere: not its IPv4 chain, not its DNAT, not its entry rules
        assert _state(node) == before
        assert "10.88.0.6" not in node.host.run("iptables-save", "-t", "nat", text=True).stdout
        r = tcp_probe(t.client, t.host_ip4, 8190, timeout=1.0)
        assert not r.ok or parse_echo(r.data).prefix != b"B:", r
        # A still owns the port over IPv6
        r6 = tcp_probe(t.client, t.host_ip6, 8190)
        assert r6.ok and parse_echo(r6.data).prefix == b"A:", r6


# ------------------------------------------------------------------ issue 16.2
def test_dual_stack_add_without_ip6tables_restore_changes_nothing(node_pm, tmp_path):
    node = node_pm
    t = node.t
    pod = t.add_pod_manual("pod", ip4="10.88.0.6", ip6="fd88::6")
    path = _bin_dir(tmp_path, "no-ip6-restore", missing=("ip6tables-restore",))
    before = _state(node)
    maps = [port_mapping(8191, 80)]
    with echo_server(pod, proto="tcp", port=80, reply_prefix=b"P:"):
        rc, out, err = node.exec("ADD", _conf(maps, prev_result("10.88.0.6/16", "fd88::6/64")),
                                 cid="pod-c", env={"PATH": path})
        assert rc == 1, (out, err)
        e = _err(out)
        assert "ip6tables-restore not found in PATH" in e["msg"], e
        assert _state(node) == before
        assert not tcp_probe(t.client, t.host_ip4, 8191, timeout=1.0).ok


@pytest.mark.parametrize("readd", [False, True], ids=["fresh", "re-add"])
def test_second_family_refused_rolls_the_first_back(node_pm, tmp_path, readd):
    """ip6tables-restore refuses (after all checks passed and IPv4 is committed):
    IPv4 goes back to exactly what it was -- nothing (fresh ADD) or the previous
    rules of this container (re-ADD with other mappings)."""
    node = node_pm
    t = node.t
    pod = t.add_pod_manual("pod", ip4="10.88.0.6", ip6="fd88::6")
    prev = prev_result("10.88.0.6/16", "fd88::6/64")
    if readd:
        rc, out, err = node.exec("ADD", _conf([port_mapping(8192, 80)], prev), cid="pod-d")
        assert rc == 0, (out, err)
    before = _state(node)
    path = _bin_dir(tmp_path, "failing-ip6-restore", failing=("ip6tables-restore",))
    with echo_server(pod, proto="tcp", port=80, reply_prefix=b"P:"):
        rc, out, err = node.exec("ADD", _conf([port_mapping(8193, 80)], prev), cid="pod-d", env={"PATH": path})
        assert rc == 1, (out, err)
        assert "simulated failure" in _err(out)["msg"]
        assert _state(node) == before
        assert not tcp_probe(t.client, t.host_ip4, 8193, timeout=1.0).ok
        if readd:
            r = tcp_probe(t.client, t.host_ip4, 8192)
            assert r.ok and parse_echo(r.data).prefix == b"P:", r


# ------------------------------------------------------------------ issue 12.3
@pytest.mark.parametrize("runtime_config", [None, {"portMappings": []}], ids=["no-runtimeConfig", "empty"])
def test_del_without_mappings_runs_no_tool_when_nothing_is_owned(node4, tmp_path, runtime_config):
    log = tmp_path / "execs.log"
    path = _bin_dir(tmp_path, "logged", log=str(log))
    conf = _conf([], prev_result("10.244.0.9/24"))
    if runtime_config is None:
        del conf["runtimeConfig"]
    else:
        conf["runtimeConfig"] = runtime_config
    # a node whose nat tables do not exist at all, then one where another container's
    # rules exist (the nat table is there, this container's chain is not)
    for other in (False, True):
        if other:
            rc, out, err = node4.exec("ADD", _conf([port_mapping(8300, 80)], prev_result("10.244.0.8/24")),
                                      cid="other")
            assert rc == 0, (out, err)
        for _ in range(2):  # DEL is idempotent
            rc, out, err = node4.exec("DEL", conf, cid="never-added", env={"PATH": path})
            assert (rc, out) == (0, ""), err
        assert not log.exists(), log.read_text()


@pytest.mark.parametrize("runtime_config", [None, {"portMappings": []}], ids=["no-runtimeConfig", "empty"])
def test_del_without_mappings_still_removes_what_the_container_owns(node, tmp_path, runtime_config):
    prev = prev_result("10.244.0.9/24", "fd00:244::9/64")
    rc, out, err = node.exec("ADD", _conf([port_mapping(8301, 80)], prev), cid="owner")
    assert rc == 0, (out, err)
    assert "--dport 8301" in node.host.run("iptables-save", "-t", "nat", text=True).stdout
    conf = _conf([], prev)
    if runtime_config is None:
        del conf["runtimeConfig"]
    else:
        conf["runtimeConfig"] = runtime_config
    rc, out, err = node.exec("DEL", conf, cid="owner")
    assert (rc, out) == (0, ""), err
    for tool in ("iptables-save", "ip6tables-save"):
        text = node.host.run(tool, "-t", "nat", text=True).stdout
        assert "CNI-DN-" not in text and "8301" not in text, text


# ------------------------------------------------------------------ issue 12.4
def test_localhost_mapping_is_not_reachable_from_the_lan(node4):
    from test_security import _mac, _send_raw
    node = node4
    t = node.t
    pod = t.add_pod_manual("pod")
    node.host.sysctl("net.ipv4.conf.eth0.route_localnet", 1)
    node.host.sysctl("net.ipv4.conf.all.route_localnet", 1)
    # the LAN client routes 127.0.0.1 via the node (the packets are written straight onto
    # its eth0, so its own lo cannot take them)
    t.client.sysctl("net.ipv4.conf.eth0.route_localnet", 1)
    maps = [port_mapping(8053, 53, "udp", host_ip="127.0.0.1")]
    rc, out, err = node.exec("ADD", _conf(maps, prev_result(f"{pod.ip4}/24")), cid="dns")
    assert rc == 0, (out, err)
    node_mac = _mac(node.host, "eth0")
    with echo_server(pod, proto="udp", port=53) as srv:
        _send_raw(t.client, "eth0", node_mac, t.client_ip4, "127.0.0.1", 8053, 4, b"attack")
        time.sleep(1.0)
        assert [h for h in srv.hits() if h.payload.startswith(b"attack")] == []
        # localhost on the node still reaches the pod
        r = udp_request(node.host, "127.0.0.1", 8053)
        assert r is not None
        # control: without the guard the same frames do get through
        node.host.run("iptables", "-w", "-t", "raw", "-F", "CNI-HOSTPORT-LOCALNET")
        _send_raw(t.client, "eth0", node_mac, t.client_ip4, "127.0.0.1", 8053, 2, b"control")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len([h for h in srv.hits() if h.payload.startswith(b"control")]) < 2:
            time.sleep(0.05)
        assert len([h for h in srv.hits() if h.payload.startswith(b"control")]) == 2


def test_localnet_guard_is_installed_once(node4):
    prev = prev_result("10.244.0.9/24")
    for cid, port in (("g1", 8401), ("g2", 8402), ("g1", 8401)):
        rc, out, err = node4.exec("ADD", _conf([port_mapping(port, 80)], prev), cid=cid)
        assert rc == 0, (out, err)
    raw = [ln for ln in node4.host.run("iptables-save", "-t", "raw", text=True).stdout.splitlines()
           if ln.startswith("-A ")]
    assert raw == ['-A PREROUTING -m comment --comment "CNI portfwd localnet guard" -j CNI-HOSTPORT-LOCALNET',
                   '-A CNI-HOSTPORT-LOCALNET -d 127.0.0.0/8 ! -i lo -m comment '
                   '--comment "CNI portfwd: drop 127.0.0.0/8 from non-loopback interfaces" -j DROP'], raw
    assert "CNI-HOSTPORT-LOCALNET" not in node4.host.run("ip6tables-save", text=True).stdout


# ------------------------------------------------------------------ issue 12.6
@pytest.mark.parametrize("token", ['eth0"x', "e\\y", "e\x01"], ids=["quote", "backslash", "control"])
def test_add_rejects_unwritable_condition_tokens(node4, token):
    before = _state(node4)
    for field in ("conditionsV4", "externalSetMarkChain"):
        extra = {field: ["-i", token]} if field == "conditionsV4" else {field: "MARK-" + token}
        rc, out, err = node4.exec("ADD", _conf([port_mapping(8600, 80)], prev_result("10.244.0.9/24"), **extra))
        assert rc == 1, (out, err)
        e = _err(out)
        assert e["code"] == 7 and field in e["msg"], e
    assert _state(node4) == before


@pytest.mark.parametrize("token", ['eth0"x', "e\\y"], ids=["quote", "backslash"])
def test_del_removes_rules_with_unwritable_tokens_installed_by_an_older_version(node4, token):
    """Upstream portmap (the Debian binary) installs such a rule without complaint; so
    did nlportmap before it validated tokens.  DEL must remove it, never wedge."""
    from test_ipt_backend import UPSTREAM
    maps = [port_mapping(8601, 80)]
    conf = _conf(maps, prev_result("10.244.0.9/24"), conditionsV4=["-i", token])
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "old", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    up = dict(conf)
    up.pop("backend")  # upstream v1.1.1 predates the option
    cp = node4.host.run(UPSTREAM, input=json.dumps(up), env=env, check=False, text=True)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    # one entry rule of another container after it: must survive
    rc, out, err = node4.exec("ADD", _conf([port_mapping(8602, 80)], prev_result("10.244.0.8/24")), cid="keep")
    assert rc == 0, (out, err)
    assert "CNI-DN-" in node4.host.run("iptables-save", "-t", "nat", text=True).stdout
    for c in (conf, _conf(maps, prev_result("10.244.0.9/24"))):  # with and without the bad tokens
        rc, out, err = node4.exec("DEL", c, cid="old")
        assert (rc, out) == (0, ""), (out, err)
    text = node4.host.run("iptables-save", "-t", "nat", text=True).stdout
    assert "8601" not in text and '"old"' not in text, text
    assert 'id: \\"keep\\"' in text and "--dport 8602" in text, text
