"""containerd's exact CNI call sequence (issue 15 part 2; reference runtimes.md, containerd).

containerd 1.6's CRI plugin, per pod: ADD (RunPodSandbox), DEL (StopPodSandbox, with the
netns and the cached prevResult), then DEL again (RemovePodSandbox, ``CNI_NETNS`` empty,
no ``prevResult``, the same ``runtimeConfig``).  Its portMappings have capitalised keys
and always a ``HostIP`` (``""`` when the pod sets none); ``CNI_NETNS`` is a
``/var/run/netns/...`` path and ``CNI_ARGS`` carries the K8S_* pod identity.

The plugin is exec'd through the installed launcher inside a throw-away node namespace,
exactly as a runtime does it.  Both DELs exit 0 and print nothing; the port is closed
and the node's ruleset is byte-for-byte what it was before the ADD (another pod's
mappings stay untouched).  Also the lost-runtime-cache case: ADD, then only the
second-style DEL (no netns, no prevResult, no mappings) must remove everything.
Run for the default backend and for ``"backend": "iptables"``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from netns_fixtures import echo_server, new_container_id, parse_echo, tcp_probe
from nlpm_helpers import EXE, prev_result

pytestmark = pytest.mark.root

HOST_PORT = 18080
OTHER_PORT = 18081


def _env_base() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NLPORTMAP_"))}
    env["NLPORTMAP_SOCKET"] = "none"  # no daemon: the cold exec path a plain node gets
    if "NLPORTMAP_LOCK_DIR" in os.environ:
        env["NLPORTMAP_LOCK_DIR"] = os.environ["NLPORTMAP_LOCK_DIR"]
    return env


def cni_args(cid: str, pod: str) -> str:
    return (f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid};"
            f"K8S_POD_UID=0b7a5c3e-1f2d-4c6b-9a8e-{cid[:12]};IgnoreUnknown=1")


def containerd_conf(backend: str | None, mappings: list | None, prev: dict | None) -> dict:
    """The conflist entry as containerd's go-cni hands it to portmap (keys as it sends them)."""
    conf: dict = {"capabilities": {"portMappings": True}, "cniVersion": "1.0.0", "name": "containerd-net",
                  "type": "portmap", "snat": True}
    if backend:
        conf["backend"] = backend
    if mappings is not None:
        conf["runtimeConfig"] = {"portMappings": mappings}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def go_cni_mapping(host_port: int, container_port: int) -> dict:
    return {"HostPort": host_port, "ContainerPort": container_port, "Protocol": "tcp", "HostIP": ""}


class Runtime:
    """Execs the installed plugin in the node namespace as containerd does."""

    def __init__(self, topology):
        self.t = topology

    def call(self, command: str, cid: str, pod_name: str, netns: str, conf: dict):
        env = {**_env_base(), "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_ARGS": cni_args(cid, pod_name), "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
        # go-cni marshals with sorted keys and no spaces
        stdin = json.dumps(conf, sort_keys=True, separators=(",", ":")).encode()
        cp = subprocess.run(["ip", "netns", "exec", self.t.host.name, EXE], input=stdin, capture_output=True,
                            env=env, timeout=60, check=False)
        return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def node_state(t) -> str:
    """The node's whole packet-filter state: nft ruleset (nftables and iptables-nft) and
    iptables-save/ip6tables-save of every table, counters zeroed, comment lines dropped."""
    ruleset = t.host.run("nft", "list", "ruleset", text=True).stdout
    parts = [re.sub(r"counter packets \d+ bytes \d+", "counter packets 0 bytes 0", ruleset)]
    for tool in ("iptables-save", "ip6tables-save"):
        cp = t.host.run(tool, check=False, text=True)
        lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in cp.stdout.splitlines() if not ln.startswith("#")]
        parts.append(f"== {tool}\n" + "\n".join(lines))
    return "\n".join(parts)


def pod_prev(t, pod) -> dict:
    """prevResult as bridge+host-local return it to containerd: both families on eth0,
    bridge and host veth without sandbox."""
    return prev_result(f"{pod.ip4}/{t.pod_subnet4.prefixlen}", f"{pod.ip6}/{t.pod_subnet6.prefixlen}",
                       sandbox=f"/var/run/netns/{pod.name}")


@pytest.fixture(params=[None, "iptables"], ids=["default-backend", "iptables"])
def cluster(request, topology_factory):
    """A node with one resident pod already forwarding OTHER_PORT (so the tables exist and
    another pod's state must survive), and a fresh pod with a TCP echo server on port 80."""
    backend = request.param
    t = topology_factory(plugin_paths={"portmap": EXE})
    rt = Runtime(t)
    resident = t.add_pod_manual("res")
    rcid = new_container_id()
    rc, out, err = rt.call("ADD", rcid, "resident", f"/var/run/netns/{resident.name}",
                           containerd_conf(backend, [go_cni_mapping(OTHER_PORT, 80)], pod_prev(t, resident)))
    assert rc == 0, (out, err)
    pod = t.add_pod_manual("pod")
    return backend, t, rt, pod, resident


def test_containerd_add_del_del(cluster):
    backend, t, rt, pod, resident = cluster
    before = node_state(t)
    cid = new_container_id()
    netns = f"/var/run/netns/{pod.name}"
    mappings = [go_cni_mapping(HOST_PORT, 80)]
    prev = pod_prev(t, pod)

    with echo_server(pod, proto="tcp", port=80) as srv4, echo_server(pod, proto="tcp", port=80, family=6) as srv6, \
            echo_server(resident, proto="tcp", port=80):
        rc, out, err = rt.call("ADD", cid, "web-0", netns, containerd_conf(backend, mappings, prev))
        assert rc == 0, (out, err)
        result = json.loads(out)
        assert result["cniVersion"] == "1.0.0" and result["ips"] == prev["ips"]
        for addr in (t.host_ip4, t.host_ip6):
            r = tcp_probe(t.client, addr, HOST_PORT, b"hello")
            assert r.ok and r.data, (addr, r)
        assert srv4.hits() and srv6.hits()
        assert parse_echo(tcp_probe(t.client, t.host_ip4, HOST_PORT, b"hello").data).peer == t.client_ip4  # DNAT, no SNAT
        assert tcp_probe(t.client, t.host_ip4, OTHER_PORT).ok  # the resident pod's own port

        # StopPodSandbox: DEL with the netns and the cached prevResult
        rc, out, err = rt.call("DEL", cid, "web-0", netns, containerd_conf(backend, mappings, prev))
        assert (rc, out, err) == (0, "", "")
        for addr in (t.host_ip4, t.host_ip6):
            r = tcp_probe(t.client, addr, HOST_PORT, b"hello", timeout=2)
            assert r.status == "refused", (addr, r)
        assert node_state(t) == before

        # RemovePodSandbox: DEL again, CNI_NETNS empty, no prevResult, same runtimeConfig
        rc, out, err = rt.call("DEL", cid, "web-0", "", containerd_conf(backend, mappings, None))
        assert (rc, out, err) == (0, "", "")
        assert node_state(t) == before
        assert tcp_probe(t.client, t.host_ip4, HOST_PORT, timeout=2).status == "refused"
        assert tcp_probe(t.client, t.host_ip4, OTHER_PORT).ok  # the resident pod was never touched


def test_lost_runtime_cache_second_style_del_removes_everything(cluster):
    backend, t, rt, pod, _resident = cluster
    before = node_state(t)
    cid = new_container_id()
    netns = f"/var/run/netns/{pod.name}"
    with echo_server(pod, proto="tcp", port=80):
        rc, out, err = rt.call("ADD", cid, "web-1", netns,
                               containerd_conf(backend, [go_cni_mapping(HOST_PORT, 80)], pod_prev(t, pod)))
        assert rc == 0, (out, err)
        assert tcp_probe(t.client, t.host_ip4, HOST_PORT, b"hello").ok
        assert node_state(t) != before

        # the runtime lost its cache: only RemovePodSandbox's DEL, without mappings either
        rc, out, err = rt.call("DEL", cid, "web-1", "", containerd_conf(backend, None, None))
        assert (rc, out, err) == (0, "", "")
        assert tcp_probe(t.client, t.host_ip4, HOST_PORT, timeout=2).status == "refused"
        assert tcp_probe(t.client, t.host_ip6, HOST_PORT, timeout=2).status == "refused"
        assert node_state(t) == before
