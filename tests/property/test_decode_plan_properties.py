"""Property-based tests of decoding and planning (issue 5, item 1), in-process.

The real skeleton and the real :class:`nlportmap.plugin.Plugin` run with a
recording backend instead of the kernel; every seam that could touch the kernel
(netlink sockets, the side effects, GC/STATUS backends, upstream clean-up,
subprocesses) is replaced, and a guard fails the test if anything still tries.
The exec'd variant against a real node is ``test_exec_properties.py``.

Properties:

* any stdin bytes and any environment: exit status 0 with the command's output,
  or 1 with exactly one CNI error object on stdout (well-known code, message),
  never a traceback, never code 999, and no backend mutation on failure;
* a valid request with exactly one defect fails with *that* defect's code (or
  succeeds where the defect is documented as tolerated, e.g. DEL's leniency);
* a valid request succeeds, and its plan is what the documented rules say
  (forwards per family, hostIP family and "any" handling, first of duplicate
  keys wins, masquerade pairs, DEL's host keys without prevResult).
"""
from __future__ import annotations

import io
import ipaddress
import json
import socket
import subprocess
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlportmap import skel
from nlportmap.plugin import Plugin
from props_strategies import (COMMANDS, defective_requests, reference_forwards, reference_host_keys,
                              requests)

WELL_KNOWN = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999}
MUTATING = ("forward", "unforward", "gc")


class FakeBackend:
    name = "nftables"

    def __init__(self):
        self.calls = []

    def forward(self, plan, policy="replace"):
        self.calls.append(("forward", plan, policy))
        return 1

    def unforward(self, plan, removed=None):
        self.calls.append(("unforward", plan))
        return 1

    def check(self, plan):
        self.calls.append(("check", plan))

    def gc(self, valid, network=None, **kw):
        self.calls.append(("gc", valid, network))
        return 0

    def usable(self):
        return None


GUARD_HITS: list[str] = []
_real_socket = socket.socket
_real_popen = subprocess.Popen


class _GuardedSocket(_real_socket):
    def __init__(self, family=-1, *a, **kw):
        if family == socket.AF_NETLINK:
            GUARD_HITS.append("netlink socket")
            raise AssertionError("property test: the plugin tried to open a netlink socket")
        super().__init__(family, *a, **kw)


class _GuardedPopen(_real_popen):
    def __init__(self, *a, **kw):
        GUARD_HITS.append(f"exec {a[:1]}")
        raise AssertionError("property test: the plugin tried to exec a program")


async def _no_side_effects(plan, timings=None):
    return None


@pytest.fixture(scope="module", autouse=True)
def no_kernel():
    """Module-wide: nothing here may reach the kernel or exec anything."""
    state = {"backend": None}
    with mock.patch("socket.socket", _GuardedSocket), \
            mock.patch("subprocess.Popen", _GuardedPopen), \
            mock.patch("nlportmap.sidefx.run_side_effects", _no_side_effects), \
            mock.patch("nlportmap.sidefx.delete_pod_flows", _no_side_effects), \
            mock.patch("nlportmap.sidefx.delete_pod_flows_sync", lambda flows: None), \
            mock.patch("nlportmap.backends.all_backends", lambda conf: [state["backend"]]), \
            mock.patch("nlportmap.backends.backend_status", lambda conf: None), \
            mock.patch.object(Plugin, "_cleanup_upstream", staticmethod(lambda plan, backend: None)):
        yield state
    assert GUARD_HITS == [], GUARD_HITS


def run(env: dict, stdin: bytes, state: dict):
    backend = FakeBackend()
    state["backend"] = backend
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(env, io.BytesIO(stdin), out, err, Plugin(backend=backend))
    return rc, out.getvalue(), err.getvalue(), backend


def check_protocol(command: str, rc: int, out: str, err: str, backend: FakeBackend) -> dict | None:
    """The CNI output rules; returns the error object on failure."""
    assert rc in (0, 1)
    assert "Traceback" not in out + err
    assert GUARD_HITS == []
    if rc == 1:
        obj = json.loads(out)  # exactly one JSON document
        assert isinstance(obj, dict) and set(obj) <= {"cniVersion", "code", "msg", "details"}, obj
        assert type(obj["code"]) is int and obj["code"] in WELL_KNOWN, obj
        assert obj["code"] != 999, (obj, err)  # the fake backend never fails: 999 = a crash
        assert isinstance(obj["msg"], str) and obj["msg"], obj
        assert [c for c in backend.calls if c[0] in MUTATING] == []
        return obj
    if command == "ADD":
        assert isinstance(json.loads(out), dict)
    elif command in COMMANDS:
        assert out == ""
    return None


env_values = st.sampled_from(["", "c1", "eth0", "/run/netns/nlpm-prop-none", "1", "dummy", "a/b", "-x",
                              "x" * 201, "eth0:1"]) | st.text(max_size=20).filter(lambda s: "\0" not in s)
environments = st.fixed_dictionaries({}, optional={
    "CNI_COMMAND": st.sampled_from((*COMMANDS, "VERSION", "FOO", "add")),
    "CNI_CONTAINERID": env_values, "CNI_NETNS": env_values, "CNI_IFNAME": env_values,
    "CNI_ARGS": env_values, "CNI_PATH": env_values, "CNI_NETNS_OVERRIDE": env_values})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=environments, stdin=st.binary(max_size=300) | requests().map(lambda r: json.dumps(r[2]).encode()))
def test_any_bytes_and_environment_give_a_result_or_a_cni_error(no_kernel, env, stdin):
    rc, out, err, backend = run(env, stdin, no_kernel)
    command = env.get("CNI_COMMAND", "")
    if not command:
        assert rc == 0 and out == "" and err.startswith(skel.ABOUT)
        return
    if command == "VERSION":
        assert rc == 0 and json.loads(out)["cniVersion"] == "1.1.0"
        return
    check_protocol(command, rc, out, err, backend)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=defective_requests())
def test_one_defect_gives_its_error_code(no_kernel, case):
    command, env, stdin, name, code = case
    rc, out, err, backend = run(env, stdin, no_kernel)
    obj = check_protocol(env.get("CNI_COMMAND", command), rc, out, err, backend)
    if code == 0:
        assert rc == 0, (name, command, obj)
    else:
        assert obj is not None and obj["code"] == code, (name, command, obj, err)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests())
def test_valid_requests_succeed_with_the_documented_plan(no_kernel, req):
    command, env, conf, ips, ms = req
    rc, out, err, backend = run(env, json.dumps(conf).encode(), no_kernel)
    obj = check_protocol(command, rc, out, err, backend)
    assert rc == 0, (conf, obj, err)
    kinds = [c[0] for c in backend.calls]
    has_prev = "prevResult" in conf
    want = reference_forwards(ms, ips) if has_prev else {}
    if command == "ADD":
        echoed = json.loads(out)
        assert echoed["cniVersion"] == conf["cniVersion"]
        assert {k: v for k, v in echoed.items() if k != "cniVersion"} == \
            {k: v for k, v in conf["prevResult"].items() if k != "cniVersion"}
        assert kinds == (["forward"] if want else [])
        if want:
            plan, policy = backend.calls[0][1], backend.calls[0][2]
            assert policy == conf.get("conflictPolicy", "replace")
            _check_plan(plan, conf, ms, ips, want)
    elif command == "DEL":
        assert kinds == ["unforward"]
        plan = backend.calls[0][1]
        assert set(plan.host_keys) == reference_host_keys(ms)
        assert {f.key: (f.container_ip, f.container_port) for f in plan.forwards} == want
    elif command == "CHECK":
        assert kinds == (["check"] if want else [])
    elif command == "GC":
        valid = {f"{a['containerID']}/{a['ifname']}" for a in conf["cni.dev/valid-attachments"]}
        assert backend.calls == [("gc", valid, conf["name"])]
    else:
        assert kinds == []


def _check_plan(plan, conf, ms, ips, want):
    assert {f.key: (f.container_ip, f.container_port) for f in plan.forwards} == want
    assert len({f.key for f in plan.forwards}) == len(plan.forwards)
    # DEL must find everything ADD installed, from the mappings alone (no prevResult)
    assert {f.key for f in plan.forwards} <= set(plan.host_keys)
    assert set(plan.host_keys) == reference_host_keys(ms)
    fams = {k[0] for k in want}
    masq = set()
    if conf.get("snat", True):
        for fam in fams:
            cip = want[next(k for k in want if k[0] == fam)][0]
            if conf.get("masqAll", False):
                masq.add((fam, None, cip))
            else:  # the container's subnet (hairpin and the other pods on its bridge)
                masq.add((fam, str(ipaddress.ip_interface(ips[fam]).network), cip))
                if fam == 4:
                    masq.add((fam, "127.0.0.1", cip))
    assert {(m.family, m.saddr, m.daddr) for m in plan.masqs} == masq
    assert (plan.route_localnet_ip is not None) == (4 in fams and conf.get("snat", True))
    lowered = [{k.lower(): v for k, v in m.items()} for m in ms]
    needed = {(k[0], k[1], k[3]) for k in want if k[1] in ("udp", "sctp")}
    allowed = {(fam, m["protocol"].lower(), m["hostport"]) for fam in fams for m in lowered}
    assert needed <= set(plan.conntrack_flush) <= allowed
    assert plan.owner.tag.endswith("/" + plan.owner.ifname)
