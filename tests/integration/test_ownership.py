"""Ownership is (network, containerID, ifname), injective for every interface name the
kernel allows (issues 12.5 and 16.6), and state written in the older owner format is
still found, listed and cleaned.

nlportmap is exec'd like a runtime does (CNI env + stdin) in throw-away namespaces;
pods are plain veth namespaces with synthetic prevResults, and real TCP goes through.
"""
from __future__ import annotations

import json
import time

import pytest
from netns_fixtures import echo_server, tcp_probe
from nlpm_helpers import netconf, port_mapping, prev_result

pytestmark = pytest.mark.root


def ok(node, command, conf, **kw):
    rc, out, err = node.exec(command, conf, **kw)
    assert rc == 0, (command, kw, out, err)
    assert "Traceback" not in out + err
    return out


def answers(node, port: int) -> bool:
    return tcp_probe(node.client, node.t.host_ip4, port, timeout=2).ok


def conf_for(pod, port: int, name: str, ifname: str = "eth0"):
    return netconf([port_mapping(port, 80)], prev_result(f"{pod.ip4}/24", ifname=ifname), name=name)


def test_same_container_and_ifname_in_two_networks_are_two_owners(node4):
    node = node4
    a, b = node.t.add_pod_manual(), node.t.add_pod_manual()
    ca, cb = conf_for(a, 8080, "net-a"), conf_for(b, 8889, "net-b")
    ok(node, "ADD", ca, cid="same")
    ok(node, "ADD", cb, cid="same")
    with echo_server(a, proto="tcp", port=80), echo_server(b, proto="tcp", port=80):
        assert answers(node, 8080) and answers(node, 8889)
        ok(node, "CHECK", ca, cid="same")
        ok(node, "CHECK", cb, cid="same")
        rows = {(r["network"], r["hostPort"]) for r in node.listing()}
        assert rows == {("net-a", 8080), ("net-b", 8889)}
        ok(node, "DEL", cb, cid="same")  # net-b's DEL leaves net-a alone
        assert answers(node, 8080) and not answers(node, 8889)
        ok(node, "CHECK", ca, cid="same")
        # DEL without mappings (a runtime that lost its metadata): still only its own network
        ok(node, "ADD", cb, cid="same")
        ok(node, "DEL", netconf([], name="net-b"), cid="same")
        assert answers(node, 8080) and not answers(node, 8889)
    ok(node, "DEL", ca, cid="same")
    assert node.listing() == []


def test_gc_of_one_network_spares_the_same_attachment_in_another(node4):
    node = node4
    a, b = node.t.add_pod_manual(), node.t.add_pod_manual()
    ok(node, "ADD", conf_for(a, 8080, "net-a"), cid="same")
    ok(node, "ADD", conf_for(b, 8889, "net-b"), cid="same")
    gc = {"cniVersion": "1.1.0", "name": "net-b", "type": "portmap", "cni.dev/valid-attachments": []}
    ok(node, "GC", gc, cid="", ifname="", netns="")
    assert {(r["network"], r["hostPort"]) for r in node.listing()} == {("net-a", 8080)}


def test_ifnames_that_older_releases_confused_are_distinct_owners(node4):
    node = node4
    p, q = node.t.add_pod_manual(), node.t.add_pod_manual()
    quote, under = conf_for(p, 8730, "nlpm-test", 'e"0'), conf_for(q, 8731, "nlpm-test", "e_0")
    ok(node, "ADD", quote, cid="c", ifname='e"0')
    ok(node, "ADD", under, cid="c", ifname="e_0")
    with echo_server(p, proto="tcp", port=80), echo_server(q, proto="tcp", port=80):
        assert answers(node, 8730) and answers(node, 8731)
        ok(node, "CHECK", quote, cid="c", ifname='e"0')
        ok(node, "CHECK", under, cid="c", ifname="e_0")
        assert sorted((r["ifname"], r["hostPort"]) for r in node.listing()) == [('e"0', 8730), ("e_0", 8731)]
        text = node.ruleset()
        assert 'comment "c/e%220 nlpm-test @' in text and 'comment "c/e_0 nlpm-test @' in text
        ok(node, "DEL", under, cid="c", ifname="e_0")
        assert answers(node, 8730) and not answers(node, 8731)
        ok(node, "ADD", under, cid="c", ifname="e_0")
        ok(node, "DEL", netconf([], name="nlpm-test"), cid="c", ifname='e"0')  # scan by owner
        assert not answers(node, 8730) and answers(node, 8731)
    ok(node, "DEL", under, cid="c", ifname="e_0")
    assert node.listing() == []


# ------------------------------------------------------------------ older owner format
def _legacy_tag(cid: str, ifname: str) -> str:
    return f"{cid}/" + ifname.replace('"', "_").replace("\\", "_")


def _legacy_hash(cid: str, ifname: str) -> bytes:
    import hashlib
    return hashlib.sha256(_legacy_tag(cid, ifname).encode()).digest()[:16]


def write_legacy_state(node, cid: str, ifname: str, network: str, pod_ip: str, port: int,
                       shadowed_port: int | None = None, manifest: bool = True) -> None:
    """What an older release's ADD left for a v4 pod mapping ``port`` -> 80: the forward,
    the masquerade pairs and its manifest, with comments ``<cid>/<ifname, '"' and '\\'
    as '_'> <network> @<ms>`` and keys under ``sha256("<cid>/<ifname>")[:16]``; with
    ``shadowed_port``, that port was mapped too and a newer owner took it over: its claim
    in ``claims`` (and its manifest record)."""
    from nlportmap.nft import layout as L
    from nlportmap.nft import netlink as N
    comment = f"{_legacy_tag(cid, ifname)} {network} @{int(time.time() * 1000) - 60_000}"
    h = _legacy_hash(cid, ifname)
    F = N.NFPROTO_IPV4
    ops = [N.set_elems(True, F, L.TABLE, L.HOSTPORTS, [(L.forward_key(4, "tcp", None, port)[1],
                                                        L.forward_data(pod_ip, 80), comment)]),
           N.set_elems(True, F, L.TABLE, L.MASQ_PAIRS, [(L.masq_key(pod_ip, pod_ip)[1], None, comment),
                                                         (L.masq_key("127.0.0.1", pod_ip)[1], None, comment)])]
    records = [port] + ([shadowed_port] if shadowed_port else [])
    if manifest:
        ops.append(N.set_elems(True, F, L.TABLE, L.OWNED, [
            (h + N.pad4(slot.to_bytes(2, "big")), L.record_data("tcp", None, p, pod_ip), comment)
            for slot, p in enumerate(records)]))
    if shadowed_port:
        ops.append(N.set_elems(True, F, L.TABLE, L.CLAIMS, [(
            L.claim_prefix("tcp", None, shadowed_port) + h, L.claim_data(pod_ip, 80), comment)]))
    s = node.sock()
    try:
        s.commit(ops)
    finally:
        s.close()


def _all_comments(node) -> list[str]:
    return sorted(e[2] for els in node.elements().values() for e in els if e[2])


@pytest.mark.parametrize("ifname", ["eth0", "e@0"])
@pytest.mark.parametrize("how", ["mappings", "no-mappings"])
def test_del_removes_state_of_the_older_owner_format(node4, ifname, how):
    node = node4
    old, other = node.t.add_pod_manual(), node.t.add_pod_manual()
    # the skeleton, and a current-format neighbour that must survive
    ok(node, "ADD", conf_for(other, 8742, "nlpm-test"), cid="other")
    write_legacy_state(node, "old", ifname, "nlpm-test", old.ip4, 8741)
    # the same attachment in another network (whose manifest an older release overwrote)
    write_legacy_state(node, "old", ifname, "net-x", old.ip4, 8743, manifest=False)
    with echo_server(old, proto="tcp", port=80):
        assert answers(node, 8741)
        rows = {(r["containerID"], r["ifname"], r["network"], r["hostPort"]) for r in node.listing()}
        assert ("old", ifname, "nlpm-test", 8741) in rows
        # CHECK accepts the older owner comment on the forward; the only thing it misses is
        # the same-subnet masquerade element that layout 4 added (an older release had none)
        rc, out, _ = node.exec("CHECK", conf_for(old, 8741, "nlpm-test", ifname), cid="old", ifname=ifname)
        msg = json.loads(out)["msg"] if rc else ""
        assert rc == 1 and "masq_nets" in msg and "owned by" not in msg and "DNAT" not in msg, msg
        conf = conf_for(old, 8741, "nlpm-test", ifname) if how == "mappings" else netconf([], name="nlpm-test")
        ok(node, "DEL", conf, cid="old", ifname=ifname)
        assert not answers(node, 8741)
        assert answers(node, 8743)  # net-x's state is another owner's
    left = _all_comments(node)
    assert not [c for c in left if " nlpm-test @" in c and c.startswith("old/")], left
    assert [c for c in left if c.startswith("old/") and " net-x @" in c]
    assert {r["hostPort"] for r in node.listing()} == {8742, 8743}


def test_older_format_claim_is_released_and_gc_collects_older_state(node4):
    node = node4
    old, new = node.t.add_pod_manual(), node.t.add_pod_manual()
    ok(node, "ADD", conf_for(new, 8750, "nlpm-test"), cid="new")  # owns 8750 now
    write_legacy_state(node, "old", "eth0", "nlpm-test", old.ip4, 8751, shadowed_port=8750)
    assert any(r["state"] == "shadowed" and r["containerID"] == "old" for r in node.listing())
    ok(node, "DEL", conf_for(old, 8751, "nlpm-test"), cid="old")
    assert {(r["containerID"], r["hostPort"], r["state"]) for r in node.listing()} == {("new", 8750, "active")}
    # GC: older-format state of an attachment that is not listed goes, a listed one stays
    write_legacy_state(node, "old", "eth0", "nlpm-test", old.ip4, 8751)
    write_legacy_state(node, "kept", "e@0", "nlpm-test", old.ip4, 8752)
    gc = {"cniVersion": "1.1.0", "name": "nlpm-test", "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": "new", "ifname": "eth0"},
                                        {"containerID": "kept", "ifname": "e@0"}]}
    ok(node, "GC", gc, cid="", ifname="", netns="")
    assert {(r["containerID"], r["hostPort"]) for r in node.listing()} == {("new", 8750), ("kept", 8752)}
    assert json.dumps(_all_comments(node)).count("old/") == 0
