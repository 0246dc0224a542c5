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


# --------------------------------------------------------------------------- decoder agreement
#
# Configurations for the two decoders (nlportmap.netconf.decode_fast and
# nlportmap.config.parse_config, tests/property/test_decoders_agree.py): a valid request
# from requests() with 0-4 drawn mutations, each a realistic way a runtime, a user or a
# broken tool spells a configuration -- wrong JSON types, nulls, other key spellings,
# duplicate spellings, bad ports/protocols/hostIPs, conditions, prevResult variants.

#: values of every JSON type, for "wrong type" mutations
ODD_VALUES = (None, True, False, 0, 1, -1, 13, 8080, 2 ** 63, 2 ** 64 + 1, -(2 ** 70), 0.0, 1.5, 8080.0, 1e300,
              "", "x", "true", "8080", "tcp", "nftables", "1.0.0", [], [None], [1], ["a"], ["a", None],
              {}, {"x": 1}, {"portMappings": None}, {"type": None})

TOP_FIELDS = ("cniVersion", "name", "type", "backend", "snat", "masqAll", "markMasqBit", "externalSetMarkChain",
              "conditionsV4", "conditionsV6", "runtimeConfig", "prevResult", "conflictPolicy",
              "hostPortListeners", "runtimeListenerProcesses", "serviceProxyInterfaces",
              "cni.dev/valid-attachments", "cni.dev/attachments", "capabilities", "ipam", "dns")

#: plausible and implausible values per top-level field (ODD_VALUES are drawn too)
FIELD_VALUES = {
    "cniVersion": ("", "0.1.0", "0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "9.9.9", "1.0"),
    "name": ("mynet", "", "a b", "k8s-pod-network"),
    "type": ("portmap", "nlportmap", ""),
    "backend": ("nftables", "iptables", "NFTABLES", "pf", ""),
    "snat": (True, False),
    "masqAll": (True, False),
    "markMasqBit": (0, 13, 14, 31, 32, -1, 2 ** 40),
    "externalSetMarkChain": ("KUBE-MARK-MASQ", "", "a b", 'q"uote'),
    "conditionsV4": ([], [""], ["", "ip", "saddr"], ["ip", "saddr", "10.0.0.0/8"], ["ip", "daddr", "!=", "{", "10.0.0.1", ",", "10.0.0.2", "}"],
                     ["iifname", "eth*"], ["tcp", "dport", "80"], ["-s", "10.0.0.0/8"], ["!", "-d", "10.0.0.1"],
                     ["-s", 'a"b'], ["ip6", "saddr", "::1"], [None]),
    "conditionsV6": ([], [""], ["ip6", "saddr", "fd00::/8"], ["oifname", "!=", "lo"], ["ip", "saddr", "10.0.0.1"],
                     ["-s", "fd00::1"], ["bogus"]),
    "conflictPolicy": ("replace", "reject", "Replace", "first", ""),
    "hostPortListeners": ("ignore", "reject", "warn", ""),
    "runtimeListenerProcesses": ([], ["conmon"], ["conmon", "rootlessport"], [""]),
    "serviceProxyInterfaces": ([], ["kube-ipvs0"], ["kube-ipvs0", "kube-dummy-if"], ["eth0"], [""], ["."],
                               ["x" * 15], ["x" * 16], ["a b"], ["a/b"], ["a:b"], ["é" * 8]),
    "cni.dev/valid-attachments": ([], [{"containerID": "c1", "ifname": "eth0"}], [None], "all"),
    "cni.dev/attachments": ([], [{"containerID": "c1", "ifname": "eth0"}]),
    "capabilities": ({}, {"portMappings": True}, {"portMappings": None}, {"portMappings": "yes"},
                     {"portMappings": True, "bandwidth": False}),
    "ipam": ({}, {"type": "host-local"}, {"TYPE": "x", "subnet": "10.0.0.0/8"}, {"type": 5}),
    "dns": ({}, {"nameservers": ["10.0.0.10"], "domain": "cluster.local", "search": ["a", "b"], "options": []},
            {"nameservers": [None]}, {"search": "a"}, {"Domain": "x"}, {"domain": 1}),
}

PORT_VALUES = (0, -1, 1, 80, 65535, 65536, 2 ** 31, 2 ** 64, 8080.0, 80.5, "80", True, None)
PROTOCOL_VALUES = ("tcp", "udp", "sctp", "TCP", "Udp", "SCTP", "", "icmp", "tcp ", "ſctp", "\u0130", 6, None)
HOST_IP_VALUES = ("", "0.0.0.0", "::", "10.99.0.1", "127.0.0.1", "fd00:99::1", "FD00:99:0::1", "::1",
                  "::ffff:10.99.0.1", "::ffff:0a63:0001", "::10.99.0.1", "::0.0.1.2", "1.2.3.04", "01.2.3.4",
                  "10.0.0.300", "10.0.0.1/24", "fe80::1%eth0", " 10.0.0.1", "10.0.0.1\n", "1::2::3",
                  "0:0:0:0:0:0:0:1", "localhost", "١٠.0.0.1", 5, None, ["10.0.0.1"])


def other_spellings(key: str) -> list[str]:
    """Spellings of ``key`` that Go's case-insensitive matching accepts."""
    out = {key.lower(), key.upper(), key[:1].upper() + key[1:], key.swapcase()}
    if "s" in key:
        out.add(key.replace("s", "ſ", 1))   # U+017F folds to "s" (Go's simple folding too)
    if "k" in key.lower():
        out.add(key.lower().replace("k", "\u212a", 1))  # Kelvin sign folds to "k"
    out.discard(key)
    return sorted(out)


def _rename(d: dict, old: str, new: str) -> dict:
    """``d`` with key ``old`` renamed to ``new`` in place of the old key (document order kept)."""
    return {(new if k == old else k): v for k, v in d.items()}


def _some_key(draw, d: dict, fields: tuple[str, ...]) -> str:
    present = [k for k in d if k in fields]
    return draw(st.sampled_from(present or list(fields)))


def _mut_type(draw, conf, command):
    key = draw(st.sampled_from(TOP_FIELDS))
    conf[key] = draw(st.sampled_from(ODD_VALUES))


def _mut_value(draw, conf, command):
    key = draw(st.sampled_from(sorted(FIELD_VALUES)))
    conf[key] = copy.deepcopy(draw(st.sampled_from(FIELD_VALUES[key])))


def _mut_null(draw, conf, command):
    key = draw(st.sampled_from(TOP_FIELDS))
    conf[key] = None


def _mut_drop(draw, conf, command):
    if conf:
        conf.pop(draw(st.sampled_from(sorted(conf))))


def _mut_case(draw, conf, command):
    if not conf:
        return
    key = draw(st.sampled_from(sorted(conf)))
    new = draw(st.sampled_from(other_spellings(key) or [key]))
    if new not in conf:
        items = list(_rename(conf, key, new).items())
        conf.clear()
        conf.update(items)


def _mut_duplicate(draw, conf, command):
    """Another spelling of one key with another value, before or after the original."""
    key = draw(st.sampled_from([*sorted(FIELD_VALUES), "runtimeConfig", "prevResult"]))
    spelling = draw(st.sampled_from(other_spellings(key)))
    if key == "runtimeConfig":
        value = {"portMappings": draw(mappings(max_size=2))}
    elif key == "prevResult":
        value = draw(prev_results())
    else:
        value = copy.deepcopy(draw(st.sampled_from(FIELD_VALUES[key] + (None,))))
    items = list(conf.items())
    pos = draw(st.integers(0, len(items)))
    items.insert(pos, (spelling, value))
    conf.clear()
    conf.update(items)


def _mappings_of(conf) -> list | None:
    rc = conf.get("runtimeConfig")
    if not isinstance(rc, dict):
        return None
    for k, v in rc.items():
        if k.lower() == "portmappings" and isinstance(v, list):
            return v
    return None


def _mut_mapping(draw, conf, command):
    """One mapping field set to a drawn (often bad) value, or a mapping key respelled/duplicated."""
    ms = _mappings_of(conf)
    if not ms:
        conf["runtimeConfig"] = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
        ms = conf["runtimeConfig"]["portMappings"]
    i = draw(st.integers(0, len(ms) - 1))
    m = ms[i]
    if not isinstance(m, dict):
        return
    field = draw(st.sampled_from(("hostPort", "containerPort", "protocol", "hostIP")))
    existing = [k for k in m if k.lower() == field.lower()]
    how = draw(st.sampled_from(("set", "set", "drop", "respell", "duplicate")))
    values = {"hostPort": PORT_VALUES, "containerPort": PORT_VALUES, "protocol": PROTOCOL_VALUES,
              "hostIP": HOST_IP_VALUES}[field]
    if how == "set":
        m[existing[-1] if existing else field] = copy.deepcopy(draw(st.sampled_from(values)))
    elif how == "drop":
        for k in existing:
            del m[k]
    elif how == "respell" and existing:
        ms[i] = _rename(m, existing[-1], draw(st.sampled_from(other_spellings(field))))
    else:
        spelling = draw(st.sampled_from([field, *other_spellings(field)]))
        if spelling not in m:
            items = list(m.items())
            items.insert(draw(st.integers(0, len(items))), (spelling, copy.deepcopy(draw(st.sampled_from(values)))))
            ms[i] = dict(items)


def _mut_mapping_list(draw, conf, command):
    """The portMappings list or runtimeConfig itself in odd shapes."""
    choice = draw(st.integers(0, 7))
    ms = draw(mappings(max_size=3))
    if choice == 0:
        conf["runtimeConfig"] = {"portMappings": [*ms, None]}
    elif choice == 1:
        conf["runtimeConfig"] = {"portMappings": [*ms, draw(st.sampled_from((1, "x", [], [80])))]}
    elif choice == 2:
        conf["runtimeConfig"] = {"portMappings": ms[:1], "PortMappings": ms}
    elif choice == 3:
        conf["runtimeConfig"] = {"PortMappings": ms, "portMappings": None}
    elif choice == 4:
        conf["runtimeConfig"] = {"portMappings": ms, "bandwidth": {"ingressRate": 1}, "ips": ["10.0.0.1"]}
    elif choice == 5:
        conf["runtimeConfig"] = draw(st.sampled_from((None, [], {}, "x", {"portMappings": {}})))
    elif choice == 6:
        # containerd's spelling (go-cni struct without JSON tags)
        conf["runtimeConfig"] = {"portMappings": [{"HostPort": m.get("hostPort", 8080), "ContainerPort": 80,
                                                   "Protocol": "tcp", "HostIP": draw(st.sampled_from(("", "10.99.0.1")))}
                                                  for m in ms] or [{"HostPort": 18080, "ContainerPort": 80,
                                                                    "Protocol": "tcp", "HostIP": ""}]}
    else:
        conf["runtimeConfig"] = {"portMappings": ms * 2}


def _mut_prev(draw, conf, command):
    conf["prevResult"] = draw(prev_results(conf.get("cniVersion") if isinstance(conf.get("cniVersion"), str) else None))


def _mut_exact_conditions(draw, conf, command):
    key = draw(st.sampled_from(("conditionsV4", "conditionsV6")))
    conf[key] = copy.deepcopy(draw(st.sampled_from(FIELD_VALUES[key])))
    if draw(st.booleans()):
        conf["backend"] = draw(st.sampled_from(("nftables", "iptables")))


MUTATIONS = (_mut_type, _mut_value, _mut_value, _mut_null, _mut_drop, _mut_case, _mut_case, _mut_duplicate,
             _mut_mapping, _mut_mapping, _mut_mapping, _mut_mapping_list, _mut_prev, _mut_prev,
             _mut_exact_conditions)

ADDRESSES = ("10.244.0.5/24", "10.244.0.5/32", "fd00:244::5/64", "::ffff:10.244.0.5/120", "10.0.0.999/24",
             "10.244.0.5", "10.244.0.5/33", "10.244.0.5/024", "fe80::1%eth0/64", "FD00:244:0::5/64",
             "10.244.0.5/255.255.255.0", "", 5, None)


@st.composite
def prev_results(draw, version: str | None = None):
    """prevResult variants: valid of any family, other family, bad addresses, odd shapes."""
    kind = draw(st.integers(0, 9))
    v = version if version and draw(st.booleans()) else draw(st.sampled_from((*SUPPORTED, "", "9.9.9")))
    ifname = draw(st.sampled_from(("eth0", "net1", "e")))
    if kind <= 3:
        prev = prev_result(v or "0.1.0", draw(container_ips()), ifname)
        if draw(st.booleans()):
            prev.pop("cniVersion", None)
        return prev
    if kind == 4:
        return draw(st.sampled_from(({}, [], "x", 1, {"cniVersion": 1}, {"CNIVersion": "0.4.0", "cniVersion": "1.0.0"},
                                     {"CNIVersion": "", "ips": []}, {"cniversion": None})))
    if kind == 5:
        ips = []
        for _ in range(draw(st.integers(0, 3))):
            e = {"address": draw(st.sampled_from(ADDRESSES))}
            if draw(st.booleans()):
                e["interface"] = draw(st.sampled_from((0, 1, 2, -1, 7, "2", None, True)))
            ips.append(e)
        return {"cniVersion": v, "interfaces": draw(st.sampled_from((
            [{"name": ifname, "sandbox": "/run/netns/x"}], [{"name": "eth0"}], [None], "eth0", None,
            [{"name": "eth0", "sandbox": "/run/netns/x", "mtu": 1500, "socketPath": "/x"}]))), "ips": ips}
    if kind == 6:
        return {"cniVersion": v, "ip4": {"ip": draw(st.sampled_from(ADDRESSES)),
                                         "gateway": draw(st.sampled_from(("10.244.0.1", "", "x", None)))},
                "ip6": draw(st.sampled_from((None, {"ip": "fd00::5/64"}, {"ip": "10.0.0.1/8"})))}
    if kind == 7:
        prev = prev_result(v or "1.0.0", {4: "10.244.0.5/24", 6: None}, ifname)
        prev["routes"] = draw(st.sampled_from(([{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}], [{"dst": "x"}],
                                               [{"dst": "0.0.0.0/0", "mtu": 1500}], [None], "r")))
        prev["dns"] = draw(st.sampled_from(({}, {"nameservers": ["10.0.0.10", None]}, {"domain": 5}, "d",
                                            {"Nameservers": "x"})))
        return prev
    if kind == 8:
        prev = prev_result(v or "1.0.0", draw(container_ips()), ifname)
        return {_cased(k, draw): val for k, val in prev.items()}
    prev = prev_result(v or "1.0.0", draw(container_ips()), ifname)
    prev["someUnknownKey"] = {"x": [1, None]}
    prev["cniVersion"] = draw(st.sampled_from(("0.4.0", "1.0.0", "1.1.0", "0.2.0", None, "")))
    return prev


@st.composite
def decoder_inputs(draw, commands=("ADD", "DEL", "CHECK")):
    """(command, env, conf): a valid request with 0-4 mutations (conf: the decoded JSON object)."""
    command, env, conf, _ips, _ms = draw(requests(commands))
    for _ in range(draw(st.integers(0, 4))):
        draw(st.sampled_from(MUTATIONS))(draw, conf, command)
    return command, env, conf


@st.composite
def stdin_bytes(draw, conf: dict):
    """The JSON text of ``conf`` as some runtime might send it -- or broken on purpose:
    other formatting, exact duplicate keys, byte-level damage, constructs msgspec and
    the standard library treat differently (NaN, huge numbers, lone surrogates, BOM)."""
    how = draw(st.integers(0, 9))
    if how <= 2:
        return json.dumps(conf, indent=draw(st.sampled_from((None, 0, 2, 4))),
                          ensure_ascii=draw(st.booleans()),
                          sort_keys=draw(st.booleans())).encode("utf-8", "surrogatepass")
    text = json.dumps(conf, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if how == 3 and text.startswith(b"{") and len(text) > 2:
        # an exact duplicate key before the real members (JSON allows it; last one wins)
        key = draw(st.sampled_from(("snat", "name", "cniVersion", "runtimeConfig", "prevResult", "backend")))
        value = draw(st.sampled_from(ODD_VALUES))
        return b"{" + json.dumps({key: value}).encode()[1:-1] + b", " + text[1:]
    if how == 4 and len(text) > 1:
        # truncated, or a byte deleted/replaced/inserted
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.integers(0, 3))
        b = bytes([draw(st.integers(0, 255))])
        return (text[:i], text[:i] + text[i + 1:], text[:i] + b + text[i + 1:], text[:i] + b + text[i:])[op]
    if how == 5 and text.startswith(b"{"):
        junk = draw(st.sampled_from((b'"x": NaN', b'"x": Infinity', b'"x": -Infinity', b'"x": 1e400', b'"x": -1e999',
                                     b'"x": "\\ud800"', b'"x": "\\udc00\\ud800"', b'"x": "\\uD83D\\uDE00"',
                                     b'"x": 123456789012345678901234567890', b'"x": 1.0e-400', b'"x": -0',
                                     b'"x": "\xed\xa0\x80"', b'"x": "\xff"', b'"x": "\x01"', b'"x": [1,]',
                                     b'"x": 0x10', b'"x": 01', b'"x": .5', b'"x": +1', b'"x": \'s\'',
                                     b'"name": "\\u006dynet"', b'"x": "\\/"', b'"snat": tru')))
        return b"{" + junk + b", " + text[1:]
    if how == 6:
        pre = draw(st.sampled_from((b"", b"\xef\xbb\xbf", b" \t\r\n", b"\x0b", b"\x00")))
        post = draw(st.sampled_from((b"", b"\n", b" \n\t", b"\x00", b"{}", b"x", b"\n\n\n")))
        return pre + text + post
    if how == 7:
        return draw(st.binary(max_size=64))
    if how == 8:
        return draw(st.sampled_from((b"", b"null", b"[]", b"{}", b'"x"', b"1", b"true", b"[1,2]", b"{" * 3000,
                                     b"[" * 2000 + b"]" * 2000, b'{"a":' * 1200 + b"1" + b"}" * 1200)))
    return json.dumps(conf, ensure_ascii=True).encode()
