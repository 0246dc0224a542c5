"""Self-healing (issue 11): records, ``nlportmap restore`` and the daemon's healer.

Every pod is added through the full chain (bridge -> host-local -> nlportmap, exec'd
like a runtime) in throw-away namespaces; flushes happen only inside the node
namespace; traffic is real.  The daemon, where used, runs inside the node namespace
with a private socket and heals records written by in-process plugins.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from netns_fixtures import echo_server, kill_process, port_mapping, tcp_probe
from nlpm_helpers import EXE, Node

pytestmark = pytest.mark.root

PORTS = (8080, 8081, 8082)


def _norm(obj):
    """`nft -j list ruleset` without handles, counter values and creation stamps; set
    elements sorted (a hash set lists them in its own order)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "handle":
                continue
            if k == "counter" and isinstance(v, dict):
                v = {}
            out[k] = _norm(v)
        if "elem" in out and isinstance(out["elem"], list):
            out["elem"] = sorted(out["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        return out
    if isinstance(obj, list):
        return [_norm(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r" @\d+", "", obj)
    return obj


def ruleset_json(node: Node):
    return _norm(json.loads(node.host.run("nft", "-j", "list", "ruleset", text=True).stdout))


def _answers(node: Node, port: int, timeout: float = 0.3) -> bool:
    return tcp_probe(node.client, node.t.host_ip4, port, timeout=timeout).ok


def _wait_all(node: Node, ports, limit: float) -> float:
    """Seconds until every port answers (polling); fails after ``limit``."""
    t0 = time.monotonic()
    todo = set(ports)
    while todo:
        todo = {p for p in todo if not _answers(node, p)}
        if todo and time.monotonic() - t0 > limit:
            raise AssertionError(f"ports {sorted(todo)} still closed after {limit} s")
    return time.monotonic() - t0


def restore(node: Node, *args: str) -> subprocess.CompletedProcess:
    cp = node.host.run(EXE, "restore", *args, check=False, text=True)
    assert cp.returncode == 0, cp.stderr
    return cp


def restored(node: Node) -> list[str]:
    return sorted(r["containerID"] for r in json.loads(restore(node, "--json").stdout))


class Daemon:
    """``nlportmap daemon`` in the node namespace (private socket), logging to a file."""

    def __init__(self, node: Node, *args: str, env: dict | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="nlpm-heal-")
        os.chmod(self.dir, 0o700)
        self.log = os.path.join(self.dir, "daemon.log")
        with open(self.log, "w") as f:
            self.proc = node.host.popen(sys.executable, "-m", "nlportmap", "daemon", "--socket",
                                        os.path.join(self.dir, "d.sock"), *args,
                                        env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)
        self.wait("listening on")

    def text(self) -> str:
        with open(self.log) as f:
            return f.read()

    def wait(self, what: str, timeout: float = 20, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(what) >= count:
                return text
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{text}"
            time.sleep(0.02)
        raise AssertionError(f"daemon log never said {what!r} x{count}:\n{self.text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_process(self.proc)
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def three(node4):
    """Three pods on 8080-8082 with echo servers, nftables backend."""
    pods = [node4.add_pod([port_mapping(p, 80)], {"backend": "nftables"}) for p in PORTS]
    servers = [echo_server(p.ns, proto="tcp", port=80, reply_prefix=f"P{i}:".encode()) for i, p in enumerate(pods)]
    for s in servers:
        s.__enter__()
    try:
        for p in PORTS:
            assert _answers(node4, p, 3)
        yield node4, pods
    finally:
        for s in servers:
            s.__exit__(None, None, None)


@pytest.mark.parametrize("damage", [("nft", "flush", "ruleset"), ("nft", "delete", "table", "ip", "nlportmap")],
                         ids=["flush-ruleset", "delete-table"])
def test_daemon_heals_within_3s(three, damage):
    node, pods = three
    before = ruleset_json(node)
    d = Daemon(node)
    try:
        d.wait("self-healing on")
        node.host.run(*damage)
        took = _wait_all(node, PORTS, 3.0)
        d.wait("heal: restored 3 attachment(s)", 3)
        print(f"\nhealed {damage[1]}: all three ports answer {took * 1000:.0f} ms after the damage")
        for p in pods:
            node.check_pod(p)  # CHECK passes again
        assert ruleset_json(node) == before
    finally:
        d.close()


def test_restore_without_daemon_brings_back_live_pods_only(node4):
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    b = node.add_pod([port_mapping(8081, 80)], {"backend": "nftables"})
    node.del_pod(b)
    before = ruleset_json(node)
    node.host.run("nft", "flush", "ruleset")
    with pytest.raises(Exception, match="missing"):
        node.check_pod(a)  # CHECK is truthful while the objects are missing
    assert restored(node) == [a.cid]
    node.check_pod(a)
    assert ruleset_json(node) == before
    with echo_server(a.ns, proto="tcp", port=80), echo_server(b.ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)
        assert not _answers(node, 8081, 1)
    assert restored(node) == []  # idempotent


def test_restore_on_an_intact_ruleset_changes_nothing(node4):
    node = node4
    node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})  # a conflict: the first is shadowed
    node.add_pod([port_mapping(8081, 80)], {"backend": "iptables"})
    nft_before = node.host.run("nft", "-a", "list", "ruleset", text=True).stdout
    cp = restore(node)
    assert "nothing to restore" in cp.stdout
    assert node.host.run("nft", "-a", "list", "ruleset", text=True).stdout == nft_before  # handles, stamps too


def test_conflict_is_restored_with_the_newest_pod_owning_the_port(node4):
    node = node4
    old = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    new = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    before = ruleset_json(node)
    node.host.run("nft", "flush", "ruleset")
    assert sorted(restored(node)) == sorted([old.cid, new.cid])
    assert ruleset_json(node) == before
    with echo_server(old.ns, proto="tcp", port=80, reply_prefix=b"OLD:"), \
            echo_server(new.ns, proto="tcp", port=80, reply_prefix=b"NEW:"):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).data.startswith(b"NEW:")
        node.del_pod(new)  # the older claim takes the port back, as before the flush
        assert tcp_probe(node.client, node.t.host_ip4, 8080).data.startswith(b"OLD:")


def test_gc_removed_pod_is_not_resurrected(node4):
    node = node4
    keep = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    gone = node.add_pod([port_mapping(8081, 80)], {"backend": "nftables"})
    gc = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": keep.cid, "ifname": "eth0"}]}
    rc, out, err = node.exec("GC", gc, cid="", ifname="")
    assert rc == 0, out + err
    assert node.forwards_of(gone.cid) == []
    node.host.run("nft", "flush", "ruleset")
    assert restored(node) == [keep.cid]
    with echo_server(keep.ns, proto="tcp", port=80), echo_server(gone.ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)
        assert not _answers(node, 8081, 1)


def test_deleted_pod_is_not_resurrected_by_the_daemon(node4):
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    b = node.add_pod([port_mapping(8081, 80)], {"backend": "nftables"})
    d = Daemon(node)
    try:
        d.wait("self-healing on")
        node.del_pod(b)  # an in-process DEL: its DELSETELEMs wake the healer, which restores nothing
        time.sleep(0.5)
        assert node.forwards_of(b.cid) == []
        node.host.run("nft", "flush", "ruleset")
        d.wait("heal: restored 1 attachment(s)", 3)
        time.sleep(0.3)
        assert node.forwards_of(b.cid) == [] and node.forwards_of(a.cid) != []
        assert "heal: restored" not in d.text().split("heal: restored 1 attachment(s)")[1]
    finally:
        d.close()


def test_no_heal_switches_it_off(node4):
    node = node4
    node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    for args, env in ((("--no-heal",), None), ((), {"NLPORTMAP_HEAL": "0"})):
        d = Daemon(node, *args, env=env)
        try:
            d.wait("self-healing off")
            node.host.run("nft", "flush", "ruleset")
            time.sleep(0.6)
            assert node.listing() == []
            assert "nlportmap" not in node.ruleset()
        finally:
            d.close()
        assert len(restored(node)) == 1


def test_operator_table_added_after_the_flush_is_left_alone(node4):
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    node.host.run("nft", "flush", "ruleset")
    node.host.run("nft", "add table inet mine; add chain inet mine c { type filter hook input priority 0; }; "
                  "add rule inet mine c tcp dport 9 counter accept comment \"operator\"")
    mine = node.host.run("nft", "-a", "list", "table", "inet", "mine", text=True).stdout
    d = Daemon(node)
    try:
        d.wait("heal: restored 1 attachment(s)", 5)  # at start-up: what went missing while no daemon ran
        node.host.run("nft", "flush", "table", "inet", "mine")  # not ours: no heal
        node.host.run("nft", "add rule inet mine c tcp dport 9 counter accept comment \"operator\"")
        mine = node.host.run("nft", "-a", "list", "table", "inet", "mine", text=True).stdout
        time.sleep(0.5)
        assert d.text().count("heal: restored") == 1
    finally:
        d.close()
    assert node.host.run("nft", "-a", "list", "table", "inet", "mine", text=True).stdout == mine
    with echo_server(a.ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)


def _ipt(node: Node) -> str:
    return node.host.run("iptables-save", "-t", "nat", text=True).stdout


def _ipt_norm(text: str) -> list[str]:
    return sorted(ln for ln in text.splitlines() if ln.startswith(("-A", ":")) and "CNI" in ln
                  for ln in [re.sub(r"\[\d+:\d+\]", "", ln)])


def test_iptables_backend_restore_after_nat_flush_and_delete(node4):
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "iptables"})
    b = node.add_pod([port_mapping(8081, 80)], {"backend": "iptables"})
    node.del_pod(b)
    before = _ipt_norm(_ipt(node))
    node.host.run("iptables", "-t", "nat", "-F")
    with pytest.raises(Exception, match="not found"):
        node.check_pod(a)
    assert restored(node) == [a.cid]
    node.check_pod(a)
    assert _ipt_norm(_ipt(node)) == before
    node.host.run("iptables", "-t", "nat", "-F")
    node.host.run("iptables", "-t", "nat", "-X")
    assert restored(node) == [a.cid]
    assert _ipt_norm(_ipt(node)) == before
    with echo_server(a.ns, proto="tcp", port=80), echo_server(b.ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)
        assert not _answers(node, 8081, 1)


def test_daemon_heals_the_iptables_backend(node4):
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "iptables"})
    d = Daemon(node)
    try:
        d.wait("self-healing on")
        with echo_server(a.ns, proto="tcp", port=80):
            assert _answers(node, 8080, 3)
            node.host.run("iptables", "-t", "nat", "-F")
            t0 = time.monotonic()
            _wait_all(node, [8080], 3.0)
            print(f"\nhealed iptables -t nat -F in {(time.monotonic() - t0) * 1000:.0f} ms")
            node.host.run("iptables", "-t", "nat", "-F")
            node.host.run("iptables", "-t", "nat", "-X")
            _wait_all(node, [8080], 3.0)
        node.check_pod(a)
    finally:
        d.close()


_KILLED_ADD = r"""
import os, signal, sys
from nlportmap.nft.backend import NftBackend
def crash(self, plan, policy="replace"):
    os.kill(os.getpid(), signal.SIGKILL)  # after the record, before the commit
NftBackend.forward = crash
from nlportmap.shim import plugin_main
import time
sys.exit(plugin_main(time.perf_counter()))
"""


def test_sigkill_during_add_then_restore(node4):
    node = node4
    pod_ns = node.t.add_netns("pod")
    conf = node.conflist({"backend": "nftables"})
    # the chain up to nlportmap, as a runtime, then nlportmap killed inside its ADD
    cid = "killed0add"
    prev = node.t.cni.add({**conf, "plugins": conf["plugins"][:-1]}, container_id=cid, netns=pod_ns.path,
                          ifname="eth0")
    pm = dict(conf["plugins"][-1], name=conf["name"], cniVersion=conf["cniVersion"], prevResult=prev,
              runtimeConfig={"portMappings": [port_mapping(8080, 80)]})
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": pod_ns.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "NLPORTMAP_SOCKET": "none"}
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, sys.executable, "-c", _KILLED_ADD],
                        input=json.dumps(pm).encode(), env=env, capture_output=True, timeout=60, check=False)
    assert cp.returncode == -signal.SIGKILL, cp.stderr
    assert node.forwards_of(cid) == []  # nothing committed
    assert restored(node) == [cid]      # the record lets restore finish the ADD
    with echo_server(pod_ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)
    # the runtime DELs the failed ADD: objects and record go, nothing comes back
    rc, out, err = node.exec("DEL", pm, cid=cid, netns=pod_ns.path)
    assert rc == 0, out + err
    node.host.run("nft", "flush", "ruleset")
    assert restored(node) == []


def test_daemon_wakes_a_dormant_table(node4):
    """Issue 16.7: a table made dormant forwards nothing; CHECK says so, the daemon notices
    the flag being set (a NEWTABLE notification) and the restore clears it."""
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    d = Daemon(node)
    try:
        d.wait("self-healing on")
        node.host.run("nft", "add", "table", "ip", "nlportmap", "{ flags dormant; }")
        d.wait("heal: restored 1 attachment(s)", 3)
    finally:
        d.close()
    assert "dormant" not in node.host.run("nft", "list", "table", "ip", "nlportmap", text=True).stdout
    node.check_pod(a)
    with echo_server(a.ns, proto="tcp", port=80):
        assert _answers(node, 8080, 3)


def test_list_shows_drift_between_records_and_kernel(node4):
    """Issue 11: a record names its owner as the kernel objects do, so `nlportmap list`
    shows recorded-but-missing forwards (after a flush) and present-but-unrecorded ones."""
    node = node4
    a = node.add_pod([port_mapping(8080, 80)], {"backend": "nftables"})
    mine = [r for r in node.listing(drift=True) if r["containerID"] == a.cid]
    assert {(r["hostPort"], r["state"], r["recorded"]) for r in mine} == {(8080, "active", True)}
    node.host.run("nft", "flush", "ruleset")
    mine = [r for r in node.listing(drift=True) if r["containerID"] == a.cid]
    assert {(r["hostPort"], r["state"], r["recorded"]) for r in mine} == {(8080, "missing", True)}
    assert restored(node) == [a.cid]
    node.host.call(_forget_records)  # in the node netns: its records directory
    mine = [r for r in node.listing(drift=True) if r["containerID"] == a.cid]
    assert {(r["hostPort"], r["state"], r["recorded"]) for r in mine} == {(8080, "active", False)}


def _forget_records():
    from nlportmap import records
    from nlportmap.plan import Owner
    from nlportmap.restore import load_all
    recs = load_all()
    assert recs
    for _, rec in recs:
        assert records.remove(Owner(rec["containerID"], rec["ifname"], rec["network"]))
