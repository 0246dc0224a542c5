"""Hypothesis strategies for the property tests: valid CNI requests, and single defects
whose CNI error code is known in advance (reference portmap-behaviour.md §1, §2 and the
module docs of nlportmap.skel / nlportmap.config).

A *request* is ``(command, env, conf)``: ``env`` the ``CNI_*`` variables, ``conf``
the decoded stdin object.  :data:`DEFECTS` maps a name to ``(applies_to,
mutate, expected)``: ``mutate(draw, command, env, conf) -> (env, stdin bytes)``
and ``expected[command]`` the error code (0 = the call succeeds anyway, e.g.
DEL's leniency for checks upstream does not have).
"""
from __future__ import annotations

import copy
import ipaddress
import json

from hypothesis import strategies as st

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
VERSIONS = {"ADD": SUPPORTED, "DEL": SUPPORTED, "CHECK": ("0.4.0", "1.0.0", "1.1.0"),
            "GC": ("1.1.0",), "STATUS": ("1.1.0",)}
NETNS = "/run/netns/nlpm-prop-none"   # never exists: the same-netns check is skipped

HOST_IPS = (None, "", "0.0.0.0", "::", "10.99.0.1", "fd00:99::1", "::ffff:10.99.0.1",
            "FD00:99:0::1", "192.0.2.7", "2001:db8::7")


def _cased(key: str, draw) -> str:
    """Go's decoder matches keys case-insensitively: sometimes send another spelling."""
    return draw(st.sampled_from((key, key.lower(), key.upper(), key[:1].upper() + key[1:])))


@st.composite
def mappings(draw, max_size: int = 6) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        m = {_cased("hostPort", draw): draw(st.integers(1, 65535) | st.sampled_from((80, 8080, 65535, 1))),
             _cased("containerPort", draw): draw(st.integers(1, 65535)),
             _cased("protocol", draw): draw(st.sampled_from(("tcp", "udp", "sctp", "TCP", "Udp")))}
        hip = draw(st.sampled_from(HOST_IPS))
        if hip is not None:
            m[_cased("hostIP", draw)] = hip
        out.append(m)
    if out and draw(st.booleans()):
        out.append(dict(draw(st.sampled_from(out))))  # a duplicate
    return out


@st.composite
def container_ips(draw) -> dict:
    """{4: "a.b.c.d/len" | None, 6: "x::y/len" | None}"""
    v4 = draw(st.none() | st.builds(lambda n, p: f"10.244.{n >> 8}.{n & 255}/{p}",
                                    st.integers(1, 65534), st.integers(8, 32)))
    v6 = draw(st.none() | st.builds(lambda n, p: f"fd00:244::{n:x}/{p}", st.integers(1, 65535),
                                    st.integers(48, 128)))
    return {4: v4, 6: v6}


def prev_result(version: str, ips: dict, ifname: str) -> dict:
    """A valid prevResult of ``version``'s result family carrying ``ips`` on ``ifname``."""
    if version in ("0.1.0", "0.2.0"):
        prev: dict = {"cniVersion": version}
        if ips[4]:
            prev["ip4"] = {"ip": ips[4], "gateway": "10.244.0.1"}
        if ips[6]:
            prev["ip6"] = {"ip": ips[6]}
        return prev
    entries = []
    for fam in (4, 6):
        if ips[fam]:
            e = {"address": ips[fam], "interface": 2}
            if not version.startswith("1."):
                e["version"] = str(fam)
            entries.append(e)
    return {"cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                           {"name": "veth0", "mac": "aa:bb:cc:00:00:02"},
                           {"name": ifname, "mac": "aa:bb:cc:00:00:03", "sandbox": NETNS}],
            "ips": entries}


@st.composite
def requests(draw, commands=COMMANDS):
    """A valid request; returns (command, env, conf, ips, mappings)."""
    command = draw(st.sampled_from(commands))
    version = draw(st.sampled_from(VERSIONS[command]))
    ifname = draw(st.sampled_from(("eth0", "net1", "e")))
    cid = draw(st.sampled_from(("c1", "a" * 64, "x.y-z_0")))
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": NETNS, "CNI_IFNAME": ifname,
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": "IgnoreUnknown=1"}
    if command in ("GC", "STATUS"):
        for k in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
            if draw(st.booleans()):
                env.pop(k)
    ms = draw(mappings())
    ips = draw(container_ips())
    conf: dict = {"cniVersion": version, "name": draw(st.sampled_from(("mynet", "a", "n.e-t_1"))),
                  "type": "portmap", "capabilities": {"portMappings": True}}
    if command in ("ADD", "DEL", "CHECK") or draw(st.booleans()):
        conf["runtimeConfig"] = {_cased("portMappings", draw): ms}
    if command in ("ADD", "CHECK") or (command == "DEL" and draw(st.booleans())):
        conf["prevResult"] = prev_result(version, ips, ifname)
    if command == "GC":
        conf["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}] * draw(st.integers(0, 2))
    for key, values in (("snat", (True, False)), ("masqAll", (True, False)), ("markMasqBit", (0, 13, 31)),
                        ("conflictPolicy", ("replace", "reject")), ("backend", ("nftables",)),
                        ("conditionsV4", (["ip", "saddr", "10.0.0.0/8"], [])),
                        ("conditionsV6", (["iifname", "eth0"], [])),
                        ("someUnknownKey", ({"x": [1, None]}, "ignored"))):
        if draw(st.integers(0, 4)) == 0:
            conf[key] = draw(st.sampled_from(values))
    return command, env, conf, ips, ms


# --------------------------------------------------------------------------- defects

ALL = COMMANDS
NEEDS_ID = ("ADD", "DEL", "CHECK")


def _env(**change):
    def mutate(draw, command, env, conf):
        e = dict(env)
        for k, v in change.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e, json.dumps(conf).encode()
    return mutate


def _stdin(raw: bytes):
    return lambda draw, command, env, conf: (env, raw)


def _conf(fn):
    def mutate(draw, command, env, conf):
        c = copy.deepcopy(conf)
        fn(c)
        return env, json.dumps(c).encode()
    return mutate


def _mapping(**fields):
    def fn(c):
        m = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
        for k, v in fields.items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
        c["runtimeConfig"] = {"portMappings": [{"hostPort": 9000, "containerPort": 90, "protocol": "udp"}, m]}
    return fn


def _set(**kv):
    def fn(c):
        c.update(kv)
    return fn


def _prev(fn):
    def wrap(c):
        ips = {4: "10.244.0.5/24", 6: None}
        c["prevResult"] = prev_result(c.get("cniVersion", "0.1.0"), ips, "eth0")
        fn(c["prevResult"])
    return wrap


def _codes(default: int, **per_command) -> dict:
    return {c: per_command.get(c, default) for c in COMMANDS}


def _del_lenient(code: int = 7) -> dict:
    """Checks we added to upstream's: they fail every command but DEL (dropped with a warning)."""
    return _codes(code, DEL=0)


def _bad_ip_prev(p):
    if "ips" in p:
        p["ips"] = [{"address": "10.0.0.999/24", "interface": 2}]
    else:
        p["ip4"] = {"ip": "10.0.0.999/24"}


DEFECTS: dict[str, tuple] = {
    # environment (code 4)
    "no CNI_PATH": (ALL, _env(CNI_PATH=None), _codes(4)),
    "no CNI_CONTAINERID": (ALL, _env(CNI_CONTAINERID=None), _codes(4, GC=0, STATUS=0)),
    "bad CNI_CONTAINERID": (ALL, _env(CNI_CONTAINERID="-bad id"), _codes(4, GC=0, STATUS=0)),
    "long CNI_CONTAINERID": (ALL, _env(CNI_CONTAINERID="a" * 201), _codes(4, GC=0, STATUS=0)),
    "no CNI_IFNAME": (ALL, _env(CNI_IFNAME=None), _codes(4, GC=0, STATUS=0)),
    "bad CNI_IFNAME": (ALL, _env(CNI_IFNAME="eth0:1"), _codes(4, GC=0, STATUS=0)),
    "long CNI_IFNAME": (ALL, _env(CNI_IFNAME="x" * 16), _codes(4, GC=0, STATUS=0)),
    "no CNI_NETNS": (ALL, _env(CNI_NETNS=None), _codes(4, DEL=0, GC=0, STATUS=0)),
    "unknown command": (ALL, _env(CNI_COMMAND="FROB"), _codes(4)),
    # stdin (6 decode, 7 name, 1 version)
    "not JSON": (ALL, _stdin(b"{\"cniVersion\": "), _codes(6)),
    "JSON array": (ALL, _stdin(b"[1, 2]"), _codes(6)),
    "binary": (ALL, _stdin(b"\xff\xfe\x00garbage"), _codes(6)),
    "empty stdin": (ALL, _stdin(b""), _codes(6)),
    "deep nesting": (ALL, _stdin(b"[" * 100000), _codes(6)),
    "no name": (ALL, _conf(lambda c: c.pop("name")), _codes(7)),
    "bad name": (ALL, _conf(_set(name="my net")), _codes(7)),
    "name not a string": (ALL, _conf(_set(name=5)), _codes(6)),
    "unsupported version": (ALL, _conf(_set(cniVersion="9.9.9")), _codes(1)),
    "version not a string": (ALL, _conf(_set(cniVersion=1.0)), _codes(6)),
    "unparsable version": (ALL, _conf(_set(cniVersion="x.y")), _codes(1, CHECK=6, GC=6, STATUS=6)),
    "old version for CHECK/GC": (("CHECK", "GC", "STATUS"), _conf(_set(cniVersion="0.3.1")), _codes(1)),
    # upstream's own checks: every command, DEL included (code 7)
    "host port 0": (ALL, _conf(_mapping(hostPort=0)), _codes(7)),
    "container port -1": (ALL, _conf(_mapping(containerPort=-1)), _codes(7)),
    "ports missing": (ALL, _conf(_mapping(hostPort=None, containerPort=None)), _codes(7)),
    "mark bit 32": (ALL, _conf(_set(markMasqBit=32)), _codes(7)),
    "mark bit and external chain": (ALL, _conf(_set(markMasqBit=3, externalSetMarkChain="X")), _codes(7)),
    "unknown backend": (ALL, _conf(_set(backend="pf")), _codes(7)),
    "backend conflict": (ALL, _conf(_set(backend="nftables", externalSetMarkChain="X")), _codes(7)),
    # our added checks: lenient on DEL (code 7 elsewhere)
    "host port 70000": (ALL, _conf(_mapping(hostPort=70000)), _del_lenient()),
    "container port 65536": (ALL, _conf(_mapping(containerPort=65536)), _del_lenient()),
    "protocol icmp": (ALL, _conf(_mapping(protocol="icmp")), _del_lenient()),
    "protocol missing": (ALL, _conf(_mapping(protocol=None)), _del_lenient()),
    "hostIP garbage": (ALL, _conf(_mapping(hostIP="10.0.0.300")), _del_lenient()),
    "hostIP with prefix": (ALL, _conf(_mapping(hostIP="10.0.0.1/24")), _del_lenient()),
    "hostIP with zone": (ALL, _conf(_mapping(hostIP="fe80::1%eth0")), _del_lenient()),
    "bad conflictPolicy": (ALL, _conf(_set(conflictPolicy="first")), _del_lenient()),
    "bad nft condition": (ALL, _conf(_set(conditionsV4=["tcp", "dport", "80"])), _del_lenient()),
    # type mismatches (code 6)
    "port as string": (ALL, _conf(_mapping(hostPort="8080")), _codes(6)),
    "port as float": (ALL, _conf(_mapping(hostPort=8080.5)), _codes(6)),
    "snat as string": (ALL, _conf(_set(snat="true")), _codes(6)),
    "runtimeConfig as list": (ALL, _conf(_set(runtimeConfig=[])), _codes(6)),
    "portMappings as object": (ALL, _conf(_set(runtimeConfig={"portMappings": {"hostPort": 1}})), _codes(6)),
    "conditions not strings": (ALL, _conf(_set(conditionsV4=[1, 2])), _codes(6)),
    "attachments not a list": (("GC",), _conf(_set(**{"cni.dev/valid-attachments": "all"})), _codes(6)),
    # prevResult
    "no prevResult": (("ADD", "CHECK"), _conf(lambda c: c.pop("prevResult", None)), _codes(7)),
    "prevResult bad CIDR": (("ADD", "DEL", "CHECK"), _conf(_prev(_bad_ip_prev)), _codes(6)),
    "prevResult other version family": (("ADD", "DEL", "CHECK"),
                                         _conf(_prev(lambda p: p.update(cniVersion="0.4.0" if p["cniVersion"].startswith("1.") else "1.0.0"))),
                                         _codes(6)),
    "prevResult interfaces not a list": (("ADD", "CHECK"),
                                         _conf(lambda c: c.update(cniVersion="1.0.0", prevResult={"interfaces": "eth0"})),
                                         _codes(6)),
    "prevResult not an object": (("ADD", "DEL", "CHECK"), _conf(_set(prevResult=[1])), _codes(6)),
}


@st.composite
def defective_requests(draw, commands=COMMANDS, failing_only: bool = False):
    """(command, env, stdin, name, expected code) with exactly one defect."""
    command, env, conf, _ips, _ms = draw(requests(commands))
    names = [n for n, (applies, _m, exp) in DEFECTS.items()
             if command in applies and (not failing_only or exp[command] != 0)]
    name = draw(st.sampled_from(sorted(names)))
    _applies, mutate, expected = DEFECTS[name]
    env, stdin = mutate(draw, command, env, conf)
    return command, env, stdin, name, expected[command]


# --------------------------------------------------------------------------- reference planning

def reference_forwards(mappings_: list[dict], ips: dict) -> dict:
    """{(fam, proto, hostIP|None, hostPort): (container ip, container port)} from the
    documented rules (reference §2.5, plan.py doc), independent of nlportmap.plan."""
    out: dict = {}
    for fam in (4, 6):
        if not ips.get(fam):
            continue
        cip = str(ipaddress.ip_interface(ips[fam]).ip)
        for m in mappings_:
            m = {k.lower(): v for k, v in m.items()}
            hip = m.get("hostip") or None
            if hip:
                a = ipaddress.ip_address(hip)
                if a.version == 6 and a.ipv4_mapped is not None:
                    a = a.ipv4_mapped
                if a.version != fam:
                    continue
                hip = None if a.is_unspecified else str(a)
            out.setdefault((fam, m["protocol"].lower(), hip, m["hostport"]), (cip, m["containerport"]))
    return out


def reference_host_keys(mappings_: list[dict]) -> set:
    keys = set()
    for fam in (4, 6):
        keys |= {k[:4] for k in reference_forwards(mappings_, {4: "10.0.0.1/8", 6: "fd00::1/8"}) if k[0] == fam}
    return keys
