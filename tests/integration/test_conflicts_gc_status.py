"""Host-port conflicts, CNI 1.1 GC and STATUS, and `nlportmap list` (issue 4).

Conflict policy ``replace`` (default): the newest ADD owns the port, the
displaced claim is kept and restored when the newer owner is deleted.
Upstream instead lets the *oldest* rule keep matching and forgets nothing, but
its DEL of the newer pod leaves nothing to restore either way.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netns_fixtures import echo_server, port_mapping, tcp_probe
from nlpm_helpers import EXE, netconf, prev_result

pytestmark = pytest.mark.root


def _who(node, port=8080):
    r = tcp_probe(node.client, node.t.host_ip4, port, timeout=1)
    return r.data[:2] if r.ok else r.status


def test_takeover_then_del_of_newer_owner_restores_older(node):
    a = node.add_pod([port_mapping(8080, 80)])
    b = node.add_pod([port_mapping(8080, 80)])
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"), \
            echo_server(b.ns, proto="tcp", port=80, reply_prefix=b"B:"):
        assert _who(node) == b"B:"
        states = {(r["containerID"], r["family"], r["state"]) for r in node.listing() if r["hostPort"] == 8080}
        assert states == {(b.cid, 4, "active"), (b.cid, 6, "active"), (a.cid, 4, "shadowed"), (a.cid, 6, "shadowed")}
        node.del_pod(b)
        assert _who(node) == b"A:"
        assert {(r["containerID"], r["state"]) for r in node.listing()} == {(a.cid, "active")}
        node.del_pod(a)
        assert _who(node) == "refused"
    assert node.listing() == []


def test_del_of_shadowed_claimant_leaves_owner_and_forgets_claim(node):
    a = node.add_pod([port_mapping(8080, 80)])
    b = node.add_pod([port_mapping(8080, 80)])
    with echo_server(b.ns, proto="tcp", port=80, reply_prefix=b"B:"):
        node.del_pod(a)
        assert _who(node) == b"B:"
        node.del_pod(b)
        assert _who(node) == "refused"  # a's claim is not resurrected
    assert node.owned_by(a.cid) == [] and node.owned_by(b.cid) == []


def test_re_add_of_displaced_pod_takes_the_port_back(node):
    a = node.add_pod([port_mapping(8080, 80)])
    b = node.add_pod([port_mapping(8080, 80)])
    rc, out, err = node.exec("ADD", netconf(a.mappings, a.result, name="nlpm-test"), cid=a.cid, netns=a.ns.path)
    assert rc == 0, (out, err)
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"):
        assert _who(node) == b"A:"
    shadowed = {(r["containerID"], r["state"]) for r in node.listing() if r["family"] == 4}
    assert shadowed == {(a.cid, "active"), (b.cid, "shadowed")}


def test_conflict_policy_reject_names_the_owner_and_changes_nothing(node):
    a = node.add_pod([port_mapping(8080, 80)])
    before = node.ruleset()
    conf = netconf([port_mapping(8080, 80)], prev_result("10.244.0.77/24"), conflictPolicy="reject")
    rc, out, _ = node.exec("ADD", conf, cid="newcomer")
    assert rc == 1
    err = json.loads(out)
    assert err["code"] == 7 and a.cid in err["msg"], err
    assert node.ruleset() == before
    # a free port is fine under reject
    conf = netconf([port_mapping(8090, 80)], prev_result("10.244.0.77/24"), conflictPolicy="reject")
    assert node.exec("ADD", conf, cid="newcomer")[0] == 0


def _gc(node, valid, name="nlpm-test"):
    conf = {"cniVersion": "1.1.0", "name": name, "type": "portmap",
            "cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]}
    return node.exec("GC", conf, cid="", ifname="", netns="")


def test_gc_removes_unlisted_attachments_with_live_traffic(node):
    a = node.add_pod([port_mapping(8080, 80)])
    b = node.add_pod([port_mapping(8090, 80)])
    c = node.add_pod([port_mapping(8091, 80)])
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"), \
            echo_server(b.ns, proto="tcp", port=80, reply_prefix=b"B:"):
        assert _who(node, 8080) == b"A:" and _who(node, 8090) == b"B:"
        rc, out, err = _gc(node, [a.cid])
        assert (rc, out) == (0, ""), err
        assert _who(node, 8080) == b"A:"           # listed: still forwarded
        assert _who(node, 8090) == "refused"       # unlisted: gone
    assert node.owned_by(b.cid) == [] and node.owned_by(c.cid) == []
    assert len(node.owned_by(a.cid)) == 5


def test_gc_with_empty_list_removes_only_ours_and_only_this_network(node):
    a = node.add_pod([port_mapping(8080, 80)])
    other = netconf([port_mapping(9000, 90)], prev_result("10.244.0.90/24"), name="othernet")
    assert node.exec("ADD", other, cid="o1")[0] == 0
    node.host.run("nft", "add", "table", "inet", "foreign")
    node.host.run("nft", "add", "chain", "inet", "foreign", "c")
    foreign_before = node.host.run("nft", "list", "table", "inet", "foreign", text=True).stdout
    assert _gc(node, [])[0] == 0
    assert node.owned_by(a.cid) == []
    assert len(node.owned_by("o1")) == 3            # other network untouched
    assert node.host.run("nft", "list", "table", "inet", "foreign", text=True).stdout == foreign_before
    assert "table ip nlportmap" in node.ruleset()   # GC removes elements, not the skeleton


def test_gc_restores_a_listed_shadowed_claim(node):
    a = node.add_pod([port_mapping(8080, 80)])
    b = node.add_pod([port_mapping(8080, 80)])
    with echo_server(a.ns, proto="tcp", port=80, reply_prefix=b"A:"):
        assert _gc(node, [a.cid])[0] == 0
        assert _who(node) == b"A:"
    assert node.owned_by(b.cid) == []


@pytest.mark.parametrize("round_", range(5))
def test_gc_spares_a_concurrent_add(node, round_):
    """An ADD that commits while GC runs belongs to a container the runtime did not know
    of when it built the list: it must survive, whichever of the two gets the node's
    lock first (we hold the lock until both are queued behind it)."""
    import fcntl
    for n in range(5):
        assert node.exec("ADD", netconf([port_mapping(10000 + n, 80)], prev_result(f"10.244.1.{n + 1}/24")),
                         cid=f"old{n}")[0] == 0
    lock = os.path.join(os.environ["NLPORTMAP_LOCK_DIR"], f"netns-{os.stat(node.host.path).st_ino}.lock")
    res = {}

    def run(key, fn):
        res[key] = fn()

    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        gc = threading.Thread(target=run, args=("gc", lambda: _gc(node, [])))
        gc.start()
        time.sleep(0.4)  # GC has started (its start time is taken) and waits for the lock
        add = threading.Thread(target=run, args=("add", lambda: node.exec(
            "ADD", netconf([port_mapping(8080, 80)], prev_result("10.244.0.200/24")), cid="newcomer")))
        add.start()
        time.sleep(0.4)
    finally:
        os.close(fd)  # release: GC and ADD now race for the lock
    gc.join()
    add.join()
    assert res["add"][0] == 0 and res["gc"][0] == 0, res
    assert len(node.owned_by("newcomer")) == 3
    assert all(not node.owned_by(f"old{n}") for n in range(5))


def test_gc_and_status_need_cni_1_1(node):
    conf = {"cniVersion": "1.0.0", "name": "nlpm-test", "type": "portmap"}
    rc, out, _ = node.exec("GC", conf)
    assert rc == 1 and json.loads(out)["code"] == 1
    rc, out, _ = node.exec("STATUS", conf)
    assert rc == 1 and json.loads(out)["code"] == 1


def test_status_ok_when_nf_tables_answers(node):
    conf = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap"}
    assert node.exec("STATUS", conf, cid="", ifname="", netns="")[:2] == (0, "")


def test_status_fails_without_net_admin(node):
    """Same namespace, nf_tables made unusable for the plugin by dropping CAP_NET_ADMIN."""
    conf = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap"}
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, "setpriv", "--bounding-set=-net_admin",
                         "--inh-caps=-net_admin", EXE], input=json.dumps(conf).encode(), capture_output=True,
                        env=env, timeout=60)
    assert cp.returncode == 1, cp
    err = json.loads(cp.stdout)
    assert err["code"] == 50 and "nftables" in err["msg"], err


def test_status_for_iptables_backend_without_the_tools(node):
    conf = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap", "backend": "iptables"}
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni", "PATH": "/nonexistent"}
    cp = subprocess.run([shutil.which("ip"), "netns", "exec", node.host.name, EXE],
                        input=json.dumps(conf).encode(), capture_output=True, env=env, timeout=60)
    assert cp.returncode == 1, cp
    err = json.loads(cp.stdout)
    assert err["code"] == 50 and "iptables" in err["msg"], err


def test_list_table_and_json(node):
    a = node.add_pod([port_mapping(8080, 80), port_mapping(5353, 53, "udp", node.t.host_ip4)])
    rows = node.listing()
    assert {(r["containerID"], r["ifname"], r["network"], r["family"], r["protocol"], r["hostIP"],
             r["hostPort"], r["containerIP"], r["containerPort"], r["backend"], r["state"], r["recorded"])
            for r in rows} == {
        (a.cid, "eth0", "nlpm-test", 4, "tcp", None, 8080, a.ip4, 80, "nftables", "active", True),
        (a.cid, "eth0", "nlpm-test", 6, "tcp", None, 8080, a.ip6, 80, "nftables", "active", True),
        (a.cid, "eth0", "nlpm-test", 4, "udp", node.t.host_ip4, 5353, a.ip4, 53, "nftables", "active", True),
    }
    rc, out, _ = node._run_cli("list")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["CONTAINER", "IFNAME", "NETWORK", "PROTO", "HOST",
                                            "CONTAINER-ADDR", "BACKEND", "STATE", "RECORDED"]
    assert all(ln.split()[-1] == "yes" for ln in lines[1:])  # every forward has its record
    assert any(f"{node.t.host_ip4}:5353" in ln and f"{a.ip4}:53" in ln for ln in lines[1:])
    assert len(lines) == 4


def test_host_listener_check_is_opt_in_and_spares_runtime_placeholders(node):
    """A host process listening on 8080 makes ADD fail only with hostPortListeners=reject,
    and not when the listener is a runtime placeholder (here: allowed by process name)."""
    prev = prev_result("10.244.0.50/24")
    with echo_server(node.host, proto="tcp", port=8080) as srv:
        before = node.ruleset()
        conf = netconf([port_mapping(8080, 80)], prev, hostPortListeners="reject")
        rc, out, _ = node.exec("ADD", conf, cid="l1")
        assert rc == 1
        err = json.loads(out)
        assert err["code"] == 7 and f"pid {srv.pid}" in err["msg"] and "0.0.0.0:8080" in err["msg"], err
        assert node.ruleset() == before
        # a different port, a UDP mapping on the same number, or another hostIP are fine
        assert node.exec("ADD", netconf([port_mapping(8081, 80), port_mapping(8080, 80, "udp")], prev,
                                        hostPortListeners="reject"), cid="l2")[0] == 0
        # the runtime's own placeholder socket is not a conflict
        comm = Path(f"/proc/{srv.pid}/comm").read_text().strip()
        conf = netconf([port_mapping(8080, 80)], prev, hostPortListeners="reject",
                       runtimeListenerProcesses=[comm])
        assert node.exec("ADD", conf, cid="l1")[0] == 0
        # default (no opt-in): DNAT simply takes the port, like upstream
        assert node.exec("ADD", netconf([port_mapping(8080, 80)], prev), cid="l3")[0] == 0


def test_host_listener_check_sees_dual_stack_sockets(node):
    """A process listening on [::]:port without IPV6_V6ONLY also takes IPv4 connections
    (Go, Java and nginx listen like that): it conflicts with an IPv4 mapping."""
    code = ("import socket,time\n"
            "s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            "s.bind(('::', 9300)); s.listen(); print('ready', flush=True); time.sleep(60)\n")
    proc = node.host.popen(sys.executable, "-I", "-c", code, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        conf = netconf([port_mapping(9300, 80)], prev_result("10.244.0.50/24"), hostPortListeners="reject")
        rc, out, _ = node.exec("ADD", conf, cid="d1")
        assert rc == 1
        err = json.loads(out)
        assert err["code"] == 7 and ":::9300" in err["msg"] and f"pid {proc.pid}" in err["msg"], err
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("name", ["containerd", "crio", "dockerd", "podman"])
def test_runtime_daemons_real_sockets_are_protected_by_default(node, name):
    """Only processes known to hold placeholder sockets (conmon, rootlessport) are spared by
    default: a real service socket of a runtime daemon is a conflict like any other."""
    code = ("import socket,time\n"
            f"open('/proc/self/comm', 'w').write({name!r})\n"
            "s=socket.socket(); s.bind(('0.0.0.0', 9310)); s.listen(); print('ready', flush=True)\n"
            "time.sleep(60)\n")
    proc = node.host.popen(sys.executable, "-I", "-c", code, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        conf = netconf([port_mapping(9310, 80)], prev_result("10.244.0.51/24"), hostPortListeners="reject")
        rc, out, _ = node.exec("ADD", conf, cid="rt1")
        assert rc == 1, out
        err = json.loads(out)
        assert err["code"] == 7 and f"{name} (pid {proc.pid})" in err["msg"], err
    finally:
        proc.kill()
        proc.wait()
