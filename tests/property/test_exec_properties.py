"""Property-based tests against the real exec'd plugin on a node with state (issue 5, item 1).

Hypothesis draws broken requests (one known defect each, see props_strategies.py)
and raw bytes; every one is exec'd inside a throw-away node namespace exactly as
a runtime does it.  The node already holds mappings, a taken-over port (a
shadowed claim) and the nlportmap tables.  Each call must exit 1 with one CNI
error object carrying the defect's code, print no traceback, and leave the
ruleset byte-for-byte unchanged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from props_strategies import DEFECTS, NETNS, requests

_INTEGRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from nlpm_helpers import EXE, Node, netconf, port_mapping, prev_result  # noqa: E402

pytestmark = pytest.mark.root

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NLPORTMAP_"))}
BASE_ENV["NLPORTMAP_SOCKET"] = "off"
if "NLPORTMAP_STATE_DIR" in os.environ:  # the suite's private record dir (tests/conftest.py)
    BASE_ENV["NLPORTMAP_STATE_DIR"] = os.environ["NLPORTMAP_STATE_DIR"]


def exec_plugin(node, env: dict, stdin: bytes):
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, EXE], input=stdin, capture_output=True,
                        env={**BASE_ENV, **env}, timeout=60)
    return cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")


@pytest.fixture
def busy_node(topology_factory):
    node = Node(topology_factory(plugin_paths={"portmap": EXE}))
    for cid, ip in (("old", "10.244.0.5"), ("new", "10.244.0.6")):
        rc, out, err = node.exec("ADD", netconf([port_mapping(8080, 80), port_mapping(5353, 53, "udp")],
                                                prev_result(f"{ip}/24", f"fd00:244::{ip[-1]}/64")), cid=cid)
        assert rc == 0, (out, err)
    assert {r["state"] for r in node.listing()} == {"active", "shadowed"}
    return node


def test_every_defect_fails_with_its_code_and_changes_nothing(busy_node):
    """Each example execs every failing defect of the catalogue once, on a drawn valid
    request of a drawn command the defect applies to."""
    node = busy_node
    before = node.ruleset()

    @settings(max_examples=2, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def one(data):
        for name in sorted(DEFECTS):
            applies, mutate, expected = DEFECTS[name]
            command = data.draw(st.sampled_from([c for c in applies if expected[c] != 0]), label=name)
            _c, env, conf, _ips, _ms = data.draw(requests((command,)))
            env, stdin = mutate(data.draw, command, env, conf)
            rc, out, err = exec_plugin(node, env, stdin)
            assert rc == 1, (name, command, out, err)
            assert "Traceback" not in out + err, (name, err)
            obj = json.loads(out)
            assert obj["code"] == expected[command] and obj["msg"], (name, command, obj)
            assert node.ruleset() == before, (name, command)

    one()


def test_random_bytes_on_stdin_fail_cleanly_and_change_nothing(busy_node):
    node = busy_node
    before = node.ruleset()

    @settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(command=st.sampled_from(["ADD", "DEL", "CHECK", "GC"]),
           stdin=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
    def one(command, stdin):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
               "CNI_PATH": "/usr/lib/cni"}
        rc, out, err = exec_plugin(node, env, stdin)
        assert "Traceback" not in out + err
        try:
            json.loads(stdin)
        except ValueError:
            assert rc == 1 and json.loads(out)["code"] == 6, (stdin, out, err)
        else:
            assert rc == 1 and json.loads(out)["code"] in (1, 6, 7), (stdin, out, err)
        assert node.ruleset() == before

    one()
