"""Bounded work for any number of portMappings (issue 12.7).

ADD accepts at most ``MAX_PORT_MAPPINGS`` mappings (code 7 above, answered fast whatever
the size); at the limit, dual-stack ADD, CHECK and DEL succeed and DEL leaves nothing; DEL
undoes even state with more mappings than the limit (written by an older release).
nlportmap is exec'd like a runtime does.
"""
from __future__ import annotations

import json
import time

import pytest
from netns_fixtures import echo_server, tcp_probe
from nlpm_helpers import netconf, prev_result

from nlportmap.netconf import MAX_PORT_MAPPINGS

pytestmark = pytest.mark.root

PREV = prev_result("10.244.0.5/24", "fd00:244::5/64")


def mappings(n: int, first: int = 10000) -> list[dict]:
    # tcp and udp, some on a hostIP: every set and the conntrack side effect get work
    out = []
    for i in range(n):
        m = {"hostPort": 1 + (first + i - 1) % 65535, "containerPort": 80, "protocol": "udp" if i % 4 == 3 else "tcp"}
        if i % 8 == 5:
            m["hostIP"] = "0.0.0.0"
        out.append(m)
    return out


def timed(node, command, conf, **kw):
    t = time.monotonic()
    rc, out, err = node.exec(command, conf, **kw)
    assert "Traceback" not in out + err
    return rc, out, err, time.monotonic() - t


def test_limit_is_documented():
    assert MAX_PORT_MAPPINGS == 1024
    with open("README.md") as f:
        assert "At most 1024 `portMappings`" in f.read()


@pytest.mark.parametrize("n", [MAX_PORT_MAPPINGS + 1, 3000, 70000])
def test_above_the_limit_add_is_refused_fast_and_changes_nothing(node, n):
    before = node.ruleset()
    for command in ("ADD", "CHECK"):
        rc, out, err, took = timed(node, command, netconf(mappings(n), PREV), cid="big")
        assert rc == 1, (out, err)
        e = json.loads(out)
        assert e["code"] == 7 and f"{n} mappings, more than the {MAX_PORT_MAPPINGS}" in e["msg"], e
        assert took < 5, took
    rc, out, err, took = timed(node, "DEL", netconf(mappings(n), PREV), cid="big")
    assert rc == 0 and took < 5, (out, err, took)
    assert node.ruleset() == before


def test_at_the_limit_add_check_del_dual_stack(node):
    conf = netconf(mappings(MAX_PORT_MAPPINGS), PREV)
    rc, out, err, t_add = timed(node, "ADD", conf, cid="big")
    assert rc == 0, (out, err)
    v4only = sum(1 for m in mappings(MAX_PORT_MAPPINGS) if "hostIP" in m)  # 0.0.0.0: IPv4 only
    assert len(node.forwards_of("big")) == 2 * MAX_PORT_MAPPINGS - v4only
    rc, out, err, t_check = timed(node, "CHECK", conf, cid="big")
    assert rc == 0, (out, err)
    rc, out, err, t_readd = timed(node, "ADD", conf, cid="big")  # re-ADD: everything is read back
    assert rc == 0, (out, err)
    rc, out, err, t_del = timed(node, "DEL", conf, cid="big")
    assert rc == 0, (out, err)
    assert node.forwards_of("big") == [] and node.owned_by("big") == [] and node.manifest_of("big") == []
    print(f"\n{MAX_PORT_MAPPINGS} mappings dual-stack: ADD {t_add:.2f}s CHECK {t_check:.2f}s "
          f"re-ADD {t_readd:.2f}s DEL {t_del:.2f}s")
    assert max(t_add, t_check, t_readd, t_del) < 10


@pytest.mark.parametrize("with_mappings", [True, False])
def test_del_undoes_more_than_the_limit(node, with_mappings):
    """3,000 mappings installed without the limit (an older release did that); DEL of the
    same config (or of none) removes all of them: the reads no longer overrun the socket."""
    from nlportmap.config import PortMapping, parse_config
    from nlportmap.nft.backend import NftBackend
    from nlportmap.nft.netlink import NetfilterSocket
    from nlportmap.plan import Owner, make_plan

    conf = parse_config(json.dumps(netconf(mappings(1), PREV)), "ADD")
    conf.runtimeConfig.portMappings = [PortMapping(hostPort=20000 + i, containerPort=80, protocol="tcp")
                                       for i in range(3000)]
    plan = make_plan(conf, {4: "10.244.0.5/24", 6: "fd00:244::5/64"}, Owner("big", "eth0", "nlpm-test"))

    def install():
        b = NftBackend(NetfilterSocket())
        try:
            b.forward(plan)
        finally:
            b.close()

    node.host.call(install)
    assert len(node.forwards_of("big")) == 6000
    pod = node.t.add_pod_manual(ip4="10.244.0.5")
    with echo_server(pod, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 22999).ok
    conf = netconf([{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"} for i in range(3000)]
                   if with_mappings else [], PREV)
    rc, out, err, took = timed(node, "DEL", conf, cid="big")
    assert rc == 0, (out, err)
    assert node.forwards_of("big") == [] and node.owned_by("big") == [] and node.manifest_of("big") == []
    assert took < 10, took
