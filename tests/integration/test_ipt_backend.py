"""The iptables backend against the real tools, inside throw-away namespaces.

Needs root.  Every iptables/nft command runs inside a namespace created here
(``nlpm-ipt-<role>-<hex>``); the backend itself runs in a thread that has
``setns()``-ed into it (``Netns.call``), so its ``iptables-save``/``-restore``
children inherit that namespace.

Reference for the upstream state: the Debian ``/usr/lib/cni/portmap`` (upstream
v1.1.1, iptables only -- it predates the nftables backend and ``masqAll``), run
exactly as a runtime would.  Upstream nftables state (v1.9 layout,
portmap-behaviour.md §4.3) is written with ``nft -f`` from the reference's
transaction text, since no upstream binary with that backend is installed.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from netns_fixtures import Netns, echo_server, parse_echo, tcp_request, udp_request
from netns_fixtures.pytest_plugin import requires_root

from nlportmap import migrate
from nlportmap.errors import InternalError, KernelError
from nlportmap.ipt import rules as R
from nlportmap.ipt.backend import ConflictError, IptBackend
from nlportmap.plan import Owner, make_plan

pytestmark = requires_root

UPSTREAM = "/usr/lib/cni/portmap"


# ------------------------------------------------------------------ helpers
def pm(host, cont, proto="tcp", hip=None):
    return NS(hostPort=host, containerPort=cont, protocol=proto, hostIP=hip)


def make(mappings, ips, *, network="mynet", cid="c1", snat=True, bit=None, ext=None, c4=None, c6=None,
         masq_all=False):
    conf = NS(runtimeConfig=NS(portMappings=list(mappings)), snat=snat, masqAll=masq_all,
              markMasqBit=bit, externalSetMarkChain=ext, conditionsV4=c4, conditionsV6=c6,
              parsed_conditions=lambda fam: ())
    return make_plan(conf, ips, Owner(cid, "eth0", network))


def upstream_conf(mappings, ips, *, network="mynet", backend="iptables", snat=True, bit=None, ext=None,
                  c4=None, c6=None):
    c = {"cniVersion": "1.0.0", "name": network, "type": "portmap", "backend": backend, "snat": snat,
         "runtimeConfig": {"portMappings": [
             {k: v for k, v in (("hostPort", m.hostPort), ("containerPort", m.containerPort),
                                ("protocol", m.protocol), ("hostIP", m.hostIP)) if v is not None}
             for m in mappings]},
         "prevResult": {"cniVersion": "1.0.0",
                        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/fake"}],
                        "ips": [{"address": a, "interface": 0} for _, a in sorted(ips.items()) if a]}}
    for k, v in (("markMasqBit", bit), ("externalSetMarkChain", ext), ("conditionsV4", c4), ("conditionsV6", c6)):
        if v is not None:
            c[k] = v
    return c


def run_upstream(ns: Netns, command: str, conf: dict, cid: str, ifname: str = "eth0"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": ns.path,
           "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    cp = ns.run(UPSTREAM, input=json.dumps(conf), env=env, check=False)
    assert cp.returncode == 0, f"upstream {command} failed: {cp.stdout} {cp.stderr}"
    return cp


def tool(fam, kind, variant=""):
    return ("iptables" if fam == 4 else "ip6tables") + (f"-{variant}" if variant else "") + kind


def save(ns: Netns, fam: int = 4, variant: str = "") -> list[str]:
    """``iptables-save -t nat`` in ``ns``, without comments and with counters zeroed."""
    out = ns.run(tool(fam, "-save", variant), "-t", "nat").stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in out.splitlines() if ln and not ln.startswith("#")]


def ipt(ns: Netns, fam: int, *args, variant: str = ""):
    return ns.run(tool(fam, "", variant), "-w", "-t", "nat", *args)


@pytest.fixture(autouse=True)
def _lockdir(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPORTMAP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def ns():
    with Netns.create("nlpm-ipt", "a") as n:
        yield n


@pytest.fixture
def ns2():
    with Netns.create("nlpm-ipt", "b") as n:
        yield n


MYNET = [pm(8080, 80), pm(5353, 53, "udp", "192.168.1.10")]
MYNET_IPS = {4: "10.22.0.5/16"}
DN = "CNI-DN-f0bca4ac77cde1bf2f3da"

# §3.8 worked example, normalised the way iptables-save 1.8.9 prints it
EXPECTED_38 = [ln for ln in (Path(__file__).resolve().parents[1] / "data" / "upstream-3.8-iptables-save.txt")
               .read_text().splitlines() if ln and not ln.startswith("#")]

EMPTY_NAT = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", "COMMIT"]


# ------------------------------------------------------------------ restore semantics
@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_restore_noflush_semantics(ns, variant):
    """What the design relies on, on the real tool (both flavours)."""
    restore = tool(4, "-restore", variant)

    def rs(text, ok=True):
        cp = ns.run(restore, "--noflush", "-w", input=text, check=False)
        assert (cp.returncode == 0) == ok, (text, cp.stderr)

    rs("*nat\n:FOO - [0:0]\n-A FOO -p tcp --dport 1 -j ACCEPT\n-A OUTPUT -j FOO\nCOMMIT\n")
    # a declared existing chain is flushed (even while referenced)
    rs("*nat\n:FOO - [0:0]\n-A FOO -p tcp --dport 3 -j ACCEPT\nCOMMIT\n")
    foo = [ln for ln in save(ns, 4, variant) if ln.startswith("-A FOO")]
    assert foo == ["-A FOO -p tcp -m tcp --dport 3 -j ACCEPT"]
    # -N of an existing chain fails the whole restore and flushes nothing
    rs("*nat\n-A OUTPUT -j RETURN\n-N FOO\nCOMMIT\n", ok=False)
    assert [ln for ln in save(ns, 4, variant) if ln.startswith("-A ")] == [
        "-A OUTPUT -j FOO", "-A FOO -p tcp -m tcp --dport 3 -j ACCEPT"]
    # -C inside a restore: exit 1 when absent
    rs("*nat\n-C FOO -p tcp --dport 3 -j ACCEPT\nCOMMIT\n")
    rs("*nat\n-C FOO -p tcp --dport 4 -j ACCEPT\nCOMMIT\n", ok=False)
    # -D by saved text, then declare+X removes a chain with rules
    rs("*nat\n-D OUTPUT -j FOO\n:FOO - [0:0]\n-X FOO\nCOMMIT\n")
    assert save(ns, 4, variant) == EMPTY_NAT
    # -X of a missing chain fails
    rs("*nat\n-X FOO\nCOMMIT\n", ok=False)


# ------------------------------------------------------------------ layout vs upstream
def test_worked_example_matches_reference_and_upstream(ns, ns2):
    b = IptBackend()
    n = ns.call(lambda: b.forward(make(MYNET, MYNET_IPS)))
    assert n > 0
    ours = save(ns)
    assert ours == EXPECTED_38
    run_upstream(ns2, "ADD", upstream_conf(MYNET, MYNET_IPS), "c1")
    assert save(ns2) == ours
    assert save(ns, 6) == save(ns2, 6)  # nothing for IPv6 in either
    # ours accepts upstream's state; upstream's CHECK (v1.1.1) treats both states alike
    # (it is broken for IPv4-only containers: it also checks IPv6 and fails)
    ns2.call(lambda: b.check(make(MYNET, MYNET_IPS)))
    env = {"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    res = [n.run(UPSTREAM, input=json.dumps(upstream_conf(MYNET, MYNET_IPS)), check=False,
                 env={**env, "CNI_NETNS": n.path}) for n in (ns, ns2)]
    assert [(r.returncode, r.stdout) for r in res[:1]] == [(r.returncode, r.stdout) for r in res[1:]]


TEST_MAPPINGS = [pm(8080, 80), pm(8081, 80), pm(8080, 81, "udp"), pm(8082, 82, "udp"),
                 pm(8083, 83, hip="192.168.0.2"), pm(8084, 84, hip="0.0.0.0"),
                 pm(8085, 85, hip="2001:db8:a::1"), pm(8086, 86, hip="::")]
DUAL = {4: "10.0.0.2/24", 6: "2001:db8::2/64"}
CONFIGS = {
    "defaults": {},
    "snat-false": {"snat": False},
    "mark-bit-5": {"bit": 5},
    "conditions": {"c4": ["-m", "comment", "--comment", "v4 cond"], "c6": ["!", "-s", "2001:db8:f::/48"]},
    "external-mark": {"ext": "PLZ-SET-MARK"},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_dual_stack_matches_upstream(ns, ns2, name):
    kw = CONFIGS[name]
    if "ext" in kw:  # portmap neither creates nor checks it
        for n in (ns, ns2):
            for fam in (4, 6):
                ipt(n, fam, "-N", "PLZ-SET-MARK")
    b = IptBackend()
    ns.call(lambda: b.forward(make(TEST_MAPPINGS, DUAL, network="test", cid="ctr1", **kw)))
    run_upstream(ns2, "ADD", upstream_conf(TEST_MAPPINGS, DUAL, network="test", **kw), "ctr1")
    for fam in (4, 6):
        assert save(ns, fam) == save(ns2, fam), f"IPv{fam} differs"
    # (upstream v1.1.1's CHECK is broken for dual stack: it checks the IPv6 chain
    # with the IPv4 rules; so the CHECK interop test below is IPv4 only)


def test_upstream_del_removes_our_state_and_ours_removes_upstreams(ns, ns2):
    b = IptBackend()
    p = make(MYNET, MYNET_IPS)
    ns.call(lambda: b.forward(p))
    run_upstream(ns, "DEL", upstream_conf(MYNET, MYNET_IPS), "c1")
    assert not any(DN in ln for ln in save(ns))
    run_upstream(ns2, "ADD", upstream_conf(MYNET, MYNET_IPS), "c1")
    assert ns2.call(lambda: b.unforward(p)) > 0
    assert not any(DN in ln for ln in save(ns2))
    assert ns2.call(lambda: b.check(make([pm(1, 1)], {})) ) is None  # no families: nothing to check


# ------------------------------------------------------------------ DEL / CHECK / re-ADD
@pytest.mark.parametrize("variant", ["", "legacy"])
def test_del_idempotent(ns, variant):
    b = IptBackend(variant)
    p = make(MYNET, {4: "10.22.0.5/16", 6: "fd00:22::5/64"})
    assert ns.call(lambda: b.unforward(p)) == 0  # nothing there yet
    ns.call(lambda: b.forward(p))
    for fam in (4, 6):
        assert any(DN in ln for ln in save(ns, fam, variant))
    assert ns.call(lambda: b.unforward(p)) > 0
    for fam in (4, 6):
        s = save(ns, fam, variant)
        assert not any(DN in ln for ln in s)
        # shared chains and their jumps stay (upstream never removes them)
        assert ":CNI-HOSTPORT-DNAT - [0:0]" in s
        assert "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT" in s
    before = [save(ns, f, variant) for f in (4, 6)]
    assert ns.call(lambda: b.unforward(p)) == 0
    assert [save(ns, f, variant) for f in (4, 6)] == before


def test_del_removes_legacy_sn_chain(ns):
    sn = R.sn_chain("mynet", "c1")
    ns.run("iptables-restore", "--noflush", "-w", input=(
        f"*nat\n:CNI-HOSTPORT-SNAT - [0:0]\n:{sn} - [0:0]\n-A {sn} -j RETURN\n"
        f"-A CNI-HOSTPORT-SNAT -m comment --comment \"snat name: \\\"mynet\\\" id: \\\"c1\\\"\" -j {sn}\n"
        "-A POSTROUTING -j CNI-HOSTPORT-SNAT\nCOMMIT\n"))
    assert ns.call(lambda: IptBackend().unforward(make(MYNET, {}))) > 0
    s = save(ns)
    assert not any(sn in ln for ln in s)
    assert ":CNI-HOSTPORT-SNAT - [0:0]" in s


def test_unforward_without_iptables_succeeds(ns, tmp_path):
    """Better than upstream (§3.9, §6 item 9): no usable iptables family -> DEL is a no-op."""
    old = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)  # no iptables tools at all
    try:
        b = IptBackend()
        assert b.usable() is not None and b.family_usable(6) is not None
        assert ns.call(lambda: b.unforward(make(MYNET, MYNET_IPS))) == 0
        assert ns.call(lambda: b.gc(set())) == 0 and ns.call(b.list) == []
        with pytest.raises(KernelError, match="failed to open iptables"):
            ns.call(lambda: b.forward(make(MYNET, MYNET_IPS)))
    finally:
        os.environ["PATH"] = old


@pytest.mark.parametrize("variant", ["", "legacy"])
def test_check(ns, variant):
    b = IptBackend(variant)
    p = make(MYNET, MYNET_IPS)
    with pytest.raises(InternalError, match=f"could not check ipv4 dnat: chain {DN} not found in iptables table nat"):
        ns.call(lambda: b.check(p))
    ns.call(lambda: b.forward(p))
    ns.call(lambda: b.check(p))
    # remove one per-container rule and one entry rule behind the backend's back
    ipt(ns, 4, "-D", DN, "-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.22.0.5:80",
        variant=variant)
    ipt(ns, 4, "-D", "CNI-HOSTPORT-DNAT", "-m", "comment", "--comment", 'dnat name: "mynet" id: "c1"',
        "-m", "multiport", "-p", "udp", "--destination-ports", "5353", "-j", DN, variant=variant)
    with pytest.raises(InternalError) as ei:
        ns.call(lambda: b.check(p))
    msg = str(ei.value)
    assert f"rule -p tcp --dport 8080 -j DNAT --to-destination 10.22.0.5:80 in chain {DN} not found in table nat" in msg
    assert "--destination-ports 5353" in msg and "in chain CNI-HOSTPORT-DNAT not found" in msg
    assert "8080 -s 127.0.0.1" not in msg  # present rules are not reported
    ns.call(lambda: b.forward(p))  # re-ADD repairs
    ns.call(lambda: b.check(p))
    # a stale extra rule in the container chain is reported
    ipt(ns, 4, "-A", DN, "-p", "tcp", "--dport", "9999", "-j", "DNAT", "--to-destination", "10.22.0.5:99",
        variant=variant)
    with pytest.raises(InternalError, match="stale"):
        ns.call(lambda: b.check(p))
    # shared rules are checked too
    ns.call(lambda: b.forward(p))
    ipt(ns, 4, "-D", "OUTPUT", *R.toplevel_jump(), variant=variant)
    with pytest.raises(InternalError, match="in chain OUTPUT not found"):
        ns.call(lambda: b.check(p))


@pytest.mark.parametrize("variant", ["", "legacy"])
def test_readd_replaces_without_duplicates(ns, variant):
    b = IptBackend(variant)
    p = make(MYNET, MYNET_IPS)
    ns.call(lambda: b.forward(p))
    first = save(ns, 4, variant)
    ns.call(lambda: b.forward(p))
    assert save(ns, 4, variant) == first
    # new IP and mappings: old rules gone (upstream would keep them, §3.11)
    p2 = make([pm(8080, 8000)], {4: "10.22.0.6/16"})
    ns.call(lambda: b.forward(p2))
    s = save(ns, 4, variant)
    assert not any("10.22.0.5" in ln or "5353" in ln for ln in s)
    assert sum(ln.startswith(f"-A {DN} ") for ln in s) == 3
    assert sum(ln.startswith("-A CNI-HOSTPORT-DNAT ") for ln in s) == 1
    assert sum("CNI-HOSTPORT-MASQ" in ln and ln.startswith("-A POSTROUTING") for ln in s) == 1
    ns.call(lambda: b.check(p2))


def test_readd_over_upstream_state(ns):
    run_upstream(ns, "ADD", upstream_conf(MYNET, MYNET_IPS), "c1")
    before = save(ns)
    b = IptBackend()
    ns.call(lambda: b.forward(make(MYNET, MYNET_IPS)))
    assert save(ns) == before


def test_conflict_policy(ns):
    b = IptBackend()
    ns.call(lambda: b.forward(make([pm(8080, 80)], {4: "10.22.0.5/16"}, cid="c1")))
    p2 = make([pm(8080, 80)], {4: "10.22.0.6/16"}, cid="c2")
    with pytest.raises(ConflictError, match='network "mynet" container "c1"'):
        ns.call(lambda: b.forward(p2, "reject"))
    ns.call(lambda: b.forward(p2))
    entries = [ln for ln in save(ns) if ln.startswith("-A CNI-HOSTPORT-DNAT")]
    assert 'id: \\"c2\\"' in entries[0] and 'id: \\"c1\\"' in entries[1]  # newest first


def test_gc_and_list(ns):
    b = IptBackend()
    ips = {4: "10.22.0.5/16", 6: "fd00:22::5/64"}
    ns.call(lambda: b.forward(make(MYNET, ips, cid="c1")))
    ns.call(lambda: b.forward(make([pm(9090, 90)], {4: "10.22.0.7/16"}, cid="c2")))
    ns.call(lambda: b.forward(make([pm(9191, 91)], {4: "10.23.0.7/16"}, network="other", cid="c3")))
    listed = ns.call(b.list)
    got = sorted((x.owner.container_id, x.family, x.proto, x.host_ip, x.host_port, x.container_ip,
                  x.container_port) for x in listed)
    assert got == [("c1", 4, "tcp", None, 8080, "10.22.0.5", 80),
                   ("c1", 4, "udp", "192.168.1.10", 5353, "10.22.0.5", 53),
                   ("c1", 6, "tcp", None, 8080, "fd00:22::5", 80),
                   ("c2", 4, "tcp", None, 9090, "10.22.0.7", 90),
                   ("c3", 4, "tcp", None, 9191, "10.23.0.7", 91)]
    assert all(x.backend == "iptables" and x.owner.network in ("mynet", "other") for x in listed)
    # GC of network "mynet" with only c2 valid: c1 goes (both families), c3 (other network) stays
    assert ns.call(lambda: b.gc({"c2/eth0"}, network="mynet")) > 0
    ids = sorted({x.owner.container_id for x in ns.call(b.list)})
    assert ids == ["c2", "c3"]
    assert ns.call(lambda: b.gc({"c2/eth0", "c3/eth0"})) == 0


# ------------------------------------------------------------------ migration
def upstream_nft(ns: Netns, fam: int, cid: str, cip: str, port: int, snat: bool = True):
    """The transaction upstream v1.9 portmap (nftables backend) runs for one mapping (§4.3)."""
    F, X = ("ip", "ip") if fam == 4 else ("ip6", "ip6")
    dst = cip if fam == 4 else f"[{cip}]"
    t = f"""add table {F} cni_hostport {{ comment "CNI portmap plugin" ; }}
add chain {F} cni_hostport hostports
add chain {F} cni_hostport hostip_hostports
add chain {F} cni_hostport hostports_all
flush chain {F} cni_hostport hostports_all
add rule {F} cni_hostport hostports_all jump hostip_hostports
add rule {F} cni_hostport hostports_all jump hostports
add chain {F} cni_hostport prerouting {{ type nat hook prerouting priority -100 ; }}
flush chain {F} cni_hostport prerouting
add rule {F} cni_hostport prerouting fib daddr type local jump hostports_all
add chain {F} cni_hostport output {{ type nat hook output priority -100 ; }}
flush chain {F} cni_hostport output
add rule {F} cni_hostport output fib daddr type local jump hostports_all
add rule {F} cni_hostport hostports tcp dport {port} dnat to {dst}:80 comment "{cid}"
"""
    if snat:
        t += f"""add chain {F} cni_hostport masquerading {{ type nat hook postrouting priority 100 ; }}
add rule {F} cni_hostport masquerading {X} saddr {cip} {X} daddr {cip} masquerade comment "{cid}"
"""
        if fam == 4:
            t += f'add rule {F} cni_hostport masquerading ip saddr 127.0.0.1 ip daddr {cip} masquerade comment "{cid}"\n'
    # pre-v1.9 hostIP rule, still cleaned by DEL
    t += f'add rule {F} cni_hostport hostip_hostports {X} daddr {"10.1.1.1" if fam == 4 else "fd00:1::1"} ' \
         f'tcp dport {port + 1} dnat to {dst}:81 comment "{cid}"\n'
    ns.run("nft", "-f", "-", input=t)


def nft_rules(ns: Netns) -> list[str]:
    out = ns.run("nft", "list", "ruleset").stdout
    return [ln.strip() for ln in out.splitlines() if ("comment" in ln and "dnat" in ln) or "masquerade" in ln]


def test_migration_cleans_one_container(ns):
    cid1, cid2 = "a" * 64, "b" * 64
    for fam, (ip1, ip2) in ((4, ("10.22.0.5", "10.22.0.6")), (6, ("fd00:22::5", "fd00:22::6"))):
        upstream_nft(ns, fam, cid1, ip1, 8080)
        upstream_nft(ns, fam, cid2, ip2, 9090)
    ips1 = {4: "10.22.0.5/16", 6: "fd00:22::5/64"}
    ips2 = {4: "10.22.0.6/16", 6: "fd00:22::6/64"}
    run_upstream(ns, "ADD", upstream_conf([pm(8080, 80)], ips1), cid1)
    run_upstream(ns, "ADD", upstream_conf([pm(9090, 80)], ips2), cid2)
    dn1, dn2 = R.dn_chain("mynet", cid1), R.dn_chain("mynet", cid2)
    rules_before = nft_rules(ns)
    assert sum(cid1 in r for r in rules_before) == 7 and sum(cid2 in r for r in rules_before) == 7

    n = ns.call(lambda: migrate.cleanup_upstream(Owner(cid1, "eth0", "mynet")))
    assert n > 0
    after = nft_rules(ns)
    assert not any(cid1 in r for r in after)
    assert [r for r in rules_before if cid2 in r] == [r for r in after if cid2 in r]
    assert "jump hostports_all" in ns.run("nft", "list", "ruleset").stdout  # shared rules stay
    for fam in (4, 6):
        s = save(ns, fam)
        assert not any(dn1 in ln for ln in s)
        assert sum(dn2 in ln for ln in s) >= 3
    # idempotent: nothing left to remove
    assert ns.call(lambda: migrate.cleanup_upstream(Owner(cid1, "eth0", "mynet"))) == 0


def test_migration_nothing_there(ns):
    """Fresh namespace: no tables, no chains -> 0, no error, and no iptables state created."""
    assert ns.call(lambda: migrate.cleanup_upstream(Owner("c1", "eth0", "mynet"))) == 0
    assert ns.run("nft", "list", "ruleset").stdout.strip() == ""


# ------------------------------------------------------------------ traffic
def test_traffic_tcp_udp_through_iptables(topology_factory):
    t = topology_factory(ipv6=False, prefix="nlpm-ipt")
    pod = t.add_pod_manual("pod")
    p = make([pm(8080, 80), pm(5353, 53, "udp")], {4: f"{pod.ip4}/{t.pod_subnet4.prefixlen}"},
             network="trafficnet", cid="c" + t.suffix)
    b = IptBackend()
    t.host.call(lambda: b.forward(p))
    t.host.sysctl("net.ipv4.conf.cni0.route_localnet", 1)  # the side effect ADD does (§5.2)
    with echo_server(pod, proto="tcp", port=80), echo_server(pod, proto="udp", port=53):
        r = tcp_request(t.client, t.host_ip4, 8080)
        assert r is not None and parse_echo(r).peer == t.client_ip4  # DNAT, no SNAT
        u = udp_request(t.client, t.host_ip4, 5353)
        assert u is not None and parse_echo(u).peer == t.client_ip4
        loc = tcp_request(t.host, "127.0.0.1", 8080)  # localhost: marked + masqueraded
        assert loc is not None and parse_echo(loc).peer == str(t.pod_subnet4.network_address + 1)
        t.host.call(lambda: b.unforward(p))
        assert tcp_request(t.client, t.host_ip4, 8080, timeout=1.0) is None


def test_plugin_delete_hook_cleans_upstream_and_never_fails(ns, capsys, monkeypatch):
    """Plugin.delete calls migrate.cleanup_upstream after unforward (guarded)."""
    from nlportmap.plugin import Plugin
    p = make(MYNET, MYNET_IPS)
    run_upstream(ns, "ADD", upstream_conf(MYNET, MYNET_IPS), "c1")
    # with the iptables backend the iptables part is left to its unforward (same chains)
    ns.call(lambda: Plugin._cleanup_upstream(p, NS(name="iptables")))
    assert any(DN in ln for ln in save(ns))
    ns.call(lambda: Plugin._cleanup_upstream(p, NS(name="nftables")))
    assert not any(DN in ln for ln in save(ns))
    # a failure is reported, not raised
    def boom(*a, **k):
        raise KernelError("refused")
    monkeypatch.setattr(migrate, "cleanup_upstream", boom)
    ns.call(lambda: Plugin._cleanup_upstream(p, NS(name="nftables")))
    assert "could not remove upstream portmap state: refused" in capsys.readouterr().err


def test_refused_restore_names_tool_error_and_line(ns):
    """externalSetMarkChain that does not exist: the restore fails as a whole (nothing
    applied) and the error carries iptables-restore's stderr and the offending line."""
    p = make([pm(8080, 80)], MYNET_IPS, ext="NO-SUCH-CHAIN")
    with pytest.raises(KernelError) as ei:
        ns.call(lambda: IptBackend().forward(p))
    msg = str(ei.value)
    assert msg.startswith("unable to setup DNAT: iptables-restore: ")
    assert "NO-SUCH-CHAIN" in msg and "[line " in msg  # nft flavour blames the COMMIT line
    assert save(ns) == EMPTY_NAT  # atomic: not even the shared chains were created


def test_concurrent_adds_with_upstream_plugin(ns):
    """Our ADDs (serialised by the netns lock) racing upstream ADDs (which only use
    iptables --wait): ours never fail, everything lands once, shared rules end up once."""
    import threading
    errs = []

    def ours(i):
        try:
            ns.call(lambda: IptBackend().forward(make([pm(10000 + i, 80)], {4: f"10.22.1.{i}/16"}, cid=f"o{i}")))
        except BaseException as e:
            errs.append(e)

    def theirs(i):
        # upstream's ensure-chain (-S probe, then -N) loses races with any other writer and
        # then fails ADD ("CHAIN_USER_ADD failed (File exists)", exit 4 with iptables-nft);
        # a runtime would retry the ADD, so do we
        for attempt in range(5):
            try:
                run_upstream(ns, "ADD", upstream_conf([pm(20000 + i, 80)], {4: f"10.22.2.{i}/16"}), f"u{i}")
                return
            except AssertionError as e:
                if "File exists" not in str(e) or attempt == 4:
                    errs.append(e)
                    return

    threads = [threading.Thread(target=f, args=(i,)) for i in range(8) for f in (ours, theirs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errs == []
    s = save(ns)
    assert sum(ln.startswith(":CNI-DN-") for ln in s) == 16
    assert sum(ln.startswith("-A CNI-HOSTPORT-DNAT") for ln in s) == 16
    # A shared rule may transiently exist twice: upstream's check-then-append is not
    # atomic, and neither is our read-then-restore against a writer that does not take
    # our lock.  The next ADD of ours collapses such copies into one.
    ns.call(lambda: IptBackend().forward(make([pm(10000, 80)], {4: "10.22.1.0/16"}, cid="o0")))
    s = save(ns)
    for shared in ("-A PREROUTING ", "-A OUTPUT ", "-A POSTROUTING ", "-A CNI-HOSTPORT-MASQ ",
                   "-A CNI-HOSTPORT-SETMARK "):
        assert sum(ln.startswith(shared) for ln in s) == 1, shared


@pytest.mark.root
@pytest.mark.parametrize("add_backend,del_backend", [("nftables", "iptables"), ("iptables", "nftables")])
def test_backend_changed_between_add_and_del_leaves_nothing(add_backend, del_backend, topology_factory):
    """An operator switches a live network's backend (e.g. adds externalSetMarkChain):
    DEL through the new backend must still remove what the old one installed."""
    from nlpm_helpers import EXE, Node, netconf, port_mapping, prev_result
    node = Node(topology_factory(plugin_paths={"portmap": EXE}))
    prev = prev_result("10.244.0.30/24")
    maps = [port_mapping(6000, 80)]
    rc, out, err = node.exec("ADD", netconf(maps, prev, backend=add_backend), cid="sw")
    assert rc == 0, (out, err)
    assert [r["backend"] for r in node.forwards_of("sw")] == [add_backend]
    rc, out, err = node.exec("DEL", netconf(maps, prev, backend=del_backend), cid="sw")
    assert (rc, out) == (0, ""), err
    assert node.forwards_of("sw") == []
    assert '"sw/' not in node.ruleset()
    assert "CNI-DN-" not in node.host.run("iptables-save", "-t", "nat", text=True).stdout
