"""A ``nlportmap`` table that is not ours is never modified (issue 16.4); a dormant table
of ours is not healthy (issue 16.7).  nlportmap is exec'd like a runtime does."""
from __future__ import annotations

import json

import pytest
from netns_fixtures import echo_server, tcp_probe
from nlpm_helpers import netconf, port_mapping, prev_result

pytestmark = pytest.mark.root

PREV = prev_result("10.244.0.5/24", "fd00:244::5/64")


def run(node, command, conf, **kw):
    rc, out, err = node.exec(command, conf, **kw)
    assert "Traceback" not in out + err
    return rc, out, err


def test_foreign_table_is_never_modified(node):
    node.host.run("nft", "add table ip nlportmap; add set ip nlportmap hostports { type ipv4_addr; }")
    before = node.ruleset()
    conf = netconf([port_mapping(8080, 80)], PREV)
    # DEL of a container that was never added: nothing of ours, so success
    for c in (conf, netconf([], PREV)):
        rc, out, err = run(node, "DEL", c, cid="never")
        assert rc == 0, (out, err)
    # ADD: a clear error naming the table and what is wrong with it
    rc, out, err = run(node, "ADD", conf, cid="c1")
    assert rc == 1, (out, err)
    e = json.loads(out)
    assert e["code"] == 999, e
    assert "table ip nlportmap exists but is not nlportmap's (no comment)" in e["msg"], e
    rc, out, _ = run(node, "CHECK", conf, cid="c1")
    assert rc == 1 and "table ip nlportmap is not nlportmap's" in json.loads(out)["msg"]
    assert node.listing() == []
    gc = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap", "cni.dev/valid-attachments": []}
    assert run(node, "GC", gc, cid="", ifname="", netns="")[0] == 0
    assert node.ruleset() == before


def test_foreign_table_with_another_comment_is_named(node):
    node.host.run("nft", 'add table ip nlportmap { comment "mine"; }')
    rc, out, _ = run(node, "ADD", netconf([port_mapping(8080, 80)], PREV), cid="c1")
    assert rc == 1 and "its comment is 'mine'" in json.loads(out)["msg"]
    assert "nlportmap" in node.ruleset() and "hostports" not in node.ruleset()


def test_dormant_table_fails_check_and_add_wakes_it(node4):
    node = node4
    pod = node.t.add_pod_manual()
    conf = netconf([port_mapping(8080, 80)], prev_result(f"{pod.ip4}/24"))
    assert run(node, "ADD", conf, cid="c1")[0] == 0
    with echo_server(pod, proto="tcp", port=80):
        assert tcp_probe(node.client, node.t.host_ip4, 8080).ok
        node.host.run("nft", "add table ip nlportmap { flags dormant; }")
        assert not tcp_probe(node.client, node.t.host_ip4, 8080, timeout=1).ok
        rc, out, _ = run(node, "CHECK", conf, cid="c1")
        assert rc == 1, out
        assert "table ip nlportmap is dormant" in json.loads(out)["msg"]
        assert run(node, "ADD", conf, cid="c1")[0] == 0
        assert "dormant" not in node.host.run("nft", "list", "table", "ip", "nlportmap", text=True).stdout
        assert run(node, "CHECK", conf, cid="c1")[0] == 0
        assert tcp_probe(node.client, node.t.host_ip4, 8080).ok
