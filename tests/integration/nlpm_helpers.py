"""Helpers for integration tests (imported by tests and conftest): run nlportmap as a runtime would, read state back.

``node`` fixture: a dual-stack :class:`netns_fixtures.Topology` whose ``portmap``
type resolves to the installed ``nlportmap`` executable, plus helpers to run
the full chain (bridge -> host-local -> nlportmap), to exec nlportmap alone
with a synthetic config, and to read nlportmap's kernel state over netlink
inside the node namespace.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from netns_fixtures import Topology, new_container_id, port_mapping
from netns_fixtures.cni import CNIError
from nlportmap.demo import plugin_executable

EXE = plugin_executable()


@dataclass
class Pod:
    ns: object
    cid: str
    mappings: list
    conflist: dict
    result: dict = field(default_factory=dict)
    ifname: str = "eth0"

    @property
    def ip4(self):
        return self.ns.ip4

    @property
    def ip6(self):
        return self.ns.ip6


class Node:
    """One node namespace with a client; ``t`` is the Topology."""

    def __init__(self, t: Topology):
        self.t = t
        self.host = t.host
        self.client = t.client

    # ---------------------------------------------------------- CNI chain
    def conflist(self, portmap_conf: dict | None = None, name: str = "nlpm-test") -> dict:
        return self.t.make_conflist(dict(portmap_conf or {}), name=name)

    def add_pod(self, mappings, portmap_conf=None, *, name="nlpm-test", cid=None, env=None) -> Pod:
        pod_ns = self.t.add_netns("pod")
        cl = self.conflist(portmap_conf, name)
        cid = cid or new_container_id()
        res = self.t.cni_chain_add(pod_ns, cid, plugins_conf=cl, capability_args={"portMappings": mappings},
                                   extra_env=env)
        return Pod(pod_ns, cid, mappings, cl, res)

    def del_pod(self, pod: Pod, env=None) -> None:
        self.t.cni_chain_del(pod.ns, pod.cid, plugins_conf=pod.conflist,
                             capability_args={"portMappings": pod.mappings}, extra_env=env)

    def check_pod(self, pod: Pod) -> None:
        self.t.cni_chain_check(pod.ns, pod.cid, plugins_conf=pod.conflist,
                               capability_args={"portMappings": pod.mappings})

    # ---------------------------------------------------------- nlportmap alone
    def exec(self, command: str, conf: dict | str | bytes, *, cid: str = "c1", ifname: str = "eth0",
             netns: str = "/run/netns/nonexistent", env: dict | None = None):
        """Exec nlportmap in the node netns like a runtime; returns (rc, stdout, stderr)."""
        import subprocess
        stdin = conf if isinstance(conf, (str, bytes)) else json.dumps(conf)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        e = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
             "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni", **(env or {})}
        cp = subprocess.run(["ip", "netns", "exec", self.host.name, EXE], input=stdin,
                            capture_output=True, env=e, timeout=60)
        return cp.returncode, cp.stdout.decode(), cp.stderr.decode()

    # ---------------------------------------------------------- state
    def sock(self):
        from nlportmap.nft.netlink import NetfilterSocket
        return self.host.call(NetfilterSocket)

    def elements(self) -> dict:
        """{(family, set): {(key hex, data hex|None, comment)}} of nlportmap's table."""
        from nlportmap.nft import layout as L
        from nlportmap.nft import netlink as N
        s = self.sock()
        try:
            out = {}
            for fam in (4, 6):
                for name in L.SETS:
                    els = s.dump_elems(N.FAMILY[fam], L.TABLE, name) or []
                    out[(fam, name)] = {(e.key.hex(), e.data.hex() if e.data else None, e.comment) for e in els}
            return out
        finally:
            s.close()

    def owned_by(self, cid: str) -> list:
        """The container's forwarding, masquerade and claim elements (not its manifest)."""
        return [(k, e) for k, els in self.elements().items() for e in els
                if e[2] and e[2].startswith(cid + "/") and k[1] != "owned"]

    def manifest_of(self, cid: str) -> list:
        """The container's manifest records in ``owned``: [(family, proto, hostIP, port, podIP)]."""
        from nlportmap.nft import layout as L
        return sorted((k[0], *L.parse_record(k[0], bytes.fromhex(e[1])))
                      for k, els in self.elements().items() if k[1] == "owned"
                      for e in els if e[2] and e[2].startswith(cid + "/"))

    def forwards_of(self, cid: str) -> list[dict]:
        """``nlportmap list --json`` rows of one container (any backend)."""
        return [r for r in self.listing() if r["containerID"] == cid]

    def listing(self, drift: bool = False) -> list[dict]:
        """``nlportmap list --json``: the forwards in the kernel; with ``drift``, also the
        recorded ones the kernel lacks (state "missing")."""
        rc, out, err = self._run_cli("list", "--json")
        assert rc == 0, err
        rows = json.loads(out)
        return rows if drift else [r for r in rows if r["state"] != "missing"]

    def _run_cli(self, *args):
        cp = self.host.run(EXE, *args, check=False, text=True)
        return cp.returncode, cp.stdout, cp.stderr

    def ruleset(self) -> str:
        """`nft list ruleset` inside the node netns (read-back only)."""
        return self.host.run("nft", "list", "ruleset", text=True).stdout


def prev_result(ip4: str | None = "10.244.0.5/24", ip6: str | None = None, version="1.0.0",
                ifname="eth0", sandbox="/run/netns/x") -> dict:
    """A synthetic prevResult as a bridge plugin would return it."""
    ips = []
    if ip4:
        ips.append({"address": ip4, "interface": 2, **({} if version.startswith("1.") else {"version": "4"})})
    if ip6:
        ips.append({"address": ip6, "interface": 2, **({} if version.startswith("1.") else {"version": "6"})})
    return {"cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                           {"name": "veth1", "mac": "aa:bb:cc:00:00:02"},
                           {"name": ifname, "mac": "aa:bb:cc:00:00:03", "sandbox": sandbox}],
            "ips": ips}


def netconf(mappings, prev=None, version="1.0.0", name="nlpm-test", **extra) -> dict:
    c = {"cniVersion": version, "name": name, "type": "portmap",
         "capabilities": {"portMappings": True},
         "runtimeConfig": {"portMappings": mappings}}
    if prev is not None:
        c["prevResult"] = prev
    c.update(extra)
    return c


__all__ = ["EXE", "CNIError", "Node", "Pod", "netconf", "new_container_id", "port_mapping", "prev_result"]
