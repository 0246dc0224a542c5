"""Churn (issue 5, item 2): concurrent ADD/DEL/CHECK/GC on ~100 attachments vs. a model.

The engine and the model live in ``tests/soak/churn.py`` (module doc there);
this is its short CI run.  The long run is ``python3 -m tests.soak`` (>= 10,000
operations, prints operations per second and every divergence).

Set ``NLPM_CHURN_SEED`` to replay a workload (the seed is in every failure message).
"""
import os
import random
import threading

import pytest

from nlpm_helpers import netconf, prev_result, port_mapping
from soak.churn import (NETWORKS, RESTORES_CLAIMS, PM, Attachment, Model, foreign_committer, normalise,
                        run_churn)

pytestmark = pytest.mark.root


def _seed() -> int:
    s = os.environ.get("NLPM_CHURN_SEED")
    return int(s) if s else random.randrange(1 << 30)


def test_churn_exec_and_in_process_matches_the_model(node):
    """8 workers, ~240 operations on 100 attachments (both families, each shared host port
    claimed by 3 attachments,
    some conflictPolicy reject), half of the calls exec'd like a runtime, the rest
    in-process in threads setns'd into the node, while another nftables user commits
    every 50 ms (generation-id retries).  Every call's outcome and the kernel's
    elements at every checkpoint must be what the model says."""
    seed = _seed()
    rep = run_churn(node, ops=240, workers=8, containers=100, sharers=3, exec_fraction=0.5,
                    seed=seed, checkpoint_every=80, foreign_interval=0.05)
    msg = f"seed {seed}: {rep.summary()}\n" + "\n".join(rep.divergences[:30])
    assert rep.divergences == [], msg
    # the run exercised what it claims to (these counts are not timing-dependent)
    assert set(rep.by_kind) == {"ADD", "DEL", "CHECK", "GC"}, msg
    assert set(rep.by_mode) == {"exec", "inproc"}, msg
    assert rep.commits > 0 and rep.checkpoints >= 3 and rep.foreign_commits_made > 0, msg


def test_churn_all_exec_on_an_ipv4_only_node(node4):
    """The same on a node without IPv6 addresses, every call exec'd like a runtime."""
    seed = _seed()
    rep = run_churn(node4, ops=100, workers=8, containers=60, sharers=2, exec_fraction=1.0,
                    seed=seed, checkpoint_every=50)
    msg = f"seed {seed}: {rep.summary()}\n" + "\n".join(rep.divergences[:30])
    assert rep.divergences == [], msg
    assert rep.by_mode == {"exec": rep.ops}, msg


def test_model_successor_rule_is_newest_surviving_claim():
    """The isolated policy rule of the model (documented in soak/churn.py)."""
    from soak.churn import successor
    if RESTORES_CLAIMS:
        assert successor(["a", "b", "c"]) == "c"
        assert successor([]) is None
    else:
        assert successor(["a", "b"]) is None


def test_model_basics():
    """The model itself, on a hand-made case (so a model bug cannot hide kernel bugs)."""
    a = Attachment("aaa", "eth0", NETWORKS[0], "10.244.0.2", "fd00:244::2", (PM(8080, 80, "tcp"),))
    b = Attachment("bbb", "eth0", NETWORKS[0], "10.244.0.3", None, (PM(8080, 81, "tcp"),), policy="reject")
    c = Attachment("ccc", "eth0", NETWORKS[1], "10.244.0.4", None, (PM(8080, 82, "tcp", "0.0.0.0"),))
    from soak.churn import Op
    m = Model([a, b, c])
    m.apply(Op("ADD", att=a))
    assert m.owner == {(4, "tcp", None, 8080): a.tag, (6, "tcp", None, 8080): a.tag}
    assert not m.outcome(Op("ADD", att=b))            # reject: a owns the v4 key
    m.apply(Op("ADD", att=b))
    assert m.owner[(4, "tcp", None, 8080)] == a.tag
    m.apply(Op("ADD", att=c))                          # 0.0.0.0 is "any" for IPv4 only
    assert m.owner == {(4, "tcp", None, 8080): c.tag, (6, "tcp", None, 8080): a.tag}
    assert m.outcome(Op("CHECK", att=c)) and not m.outcome(Op("CHECK", att=a))
    m.apply(Op("GC", network=NETWORKS[1], valid=()))   # c unlisted in its network
    assert m.owner.get((4, "tcp", None, 8080)) == (a.tag if RESTORES_CLAIMS else None)
    m.apply(Op("DEL", att=a))
    assert m.owner == {} and m.added == set()
    assert all(not v for v in m.elements().values())


def test_restore_order_is_newest_surviving_claim(node):
    """Six attachments ADD the same host port in turn; DELs of the current owner must hand
    the port back in reverse ADD order (the newest surviving claim), so that "the newest
    live ADD owns the port" holds at all times.  Chance of passing by luck with a random
    pick: 1/120 per round, three rounds."""
    for rnd in range(3):
        port = 8080 + rnd
        cids = [f"lifo{rnd}x{i}" for i in range(6)]
        for i, cid in enumerate(cids):
            rc, out, err = node.exec("ADD", netconf([port_mapping(port, 80)], prev_result(f"10.244.{rnd}.{10 + i}/24")),
                                     cid=cid)
            assert rc == 0, (out, err)
        order = []
        for i in reversed(range(1, 6)):
            assert node.exec("DEL", netconf([port_mapping(port, 80)], prev_result(f"10.244.{rnd}.{10 + i}/24")),
                             cid=cids[i])[0] == 0
            live = {e[2].split(" ")[0] for k, els in normalise(node.elements()).items()
                    if k == (4, "hostports") for e in els if e[0] == f"06000000{port:04x}0000"}
            order.append(live)
        assert order == [{f"{cids[i]}/eth0"} for i in reversed(range(5))]


def test_calls_succeed_while_another_nftables_user_commits_every_5ms(node):
    """Another program on the node (kube-proxy, firewalld, ...) commits to a table of its
    own 200 times a second.  It never touches nlportmap's table, so nothing nlportmap
    reads can change under it: ADD, DEL and GC must still succeed."""
    stop = threading.Event()
    t = threading.Thread(target=foreign_committer, args=(node.host.path, 0.005, stop), daemon=True)
    t.start()
    try:
        results = []
        confs = [netconf([port_mapping(8080 + i, 80), port_mapping(5353, 53, "udp")],
                         prev_result(f"10.244.0.{10 + i}/24", f"fd00:244::{10 + i:x}/64")) for i in range(3)]
        for i in range(3):
            results.append(node.exec("ADD", confs[i], cid=f"busy{i}"))
        results.append(node.exec("DEL", confs[0], cid="busy0"))
    finally:
        stop.set()
        t.join(10)
    assert [rc for rc, _out, _err in results] == [0, 0, 0, 0], [out for _rc, out, _err in results]
    # busy2 owns 5353 (busy1's claim shadowed); busy0 is gone entirely
    assert [len(node.owned_by(f"busy{i}")) for i in range(3)] == [0, 7, 7]
