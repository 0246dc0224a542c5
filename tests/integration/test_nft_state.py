"""nlportmap's kernel state, read back over netlink: CHECK, DEL, re-ADD, bad input, concurrency.

nlportmap is exec'd inside the node namespace exactly as a runtime does (env
vars + JSON on stdin) with synthetic prevResults; the state is read back with
our own netlink dump and, for operators' eyes, `nft list ruleset`.
"""
import json
import re
import subprocess
import threading

import pytest

from nlpm_helpers import EXE, netconf, port_mapping, prev_result

pytestmark = pytest.mark.root

M = [port_mapping(8080, 80), port_mapping(5353, 53, "udp"), port_mapping(9443, 443, "tcp", "10.99.0.1")]


def add(node, cid="c1", mappings=M, prev=None, **extra):
    prev = prev or prev_result("10.244.0.5/24", "fd00:244::5/64")
    rc, out, err = node.exec("ADD", netconf(mappings, prev, **extra), cid=cid)
    assert rc == 0, (out, err)
    return json.loads(out)


def test_add_echoes_prev_result_and_installs_each_element(node):
    prev = prev_result("10.244.0.5/24", "fd00:244::5/64")
    out = add(node, prev=prev)
    assert out["ips"] == prev["ips"] and out["interfaces"] == prev["interfaces"]
    rows = {(r["family"], r["protocol"], r["hostIP"], r["hostPort"], r["containerIP"], r["containerPort"])
            for r in node.listing() if r["containerID"] == "c1"}
    assert rows == {
        (4, "tcp", None, 8080, "10.244.0.5", 80), (4, "udp", None, 5353, "10.244.0.5", 53),
        (4, "tcp", "10.99.0.1", 9443, "10.244.0.5", 443),
        (6, "tcp", None, 8080, "fd00:244::5", 80), (6, "udp", None, 5353, "fd00:244::5", 53),
    }
    assert all(r["ifname"] == "eth0" and r["network"] == "nlpm-test" for r in node.listing())


def test_check_passes_then_detects_a_removed_element(node):
    add(node)
    conf = netconf(M, prev_result("10.244.0.5/24", "fd00:244::5/64"))
    assert node.exec("CHECK", conf, cid="c1")[0] == 0
    node.host.run("nft", "delete", "element", "ip", "nlportmap", "hostports", "{ udp . 5353 }")
    rc, out, _ = node.exec("CHECK", conf, cid="c1")
    assert rc == 1
    err = json.loads(out)
    assert "missing DNAT udp 0.0.0.0:5353 -> 10.244.0.5:53" in err["msg"], err
    assert "8080" not in err["msg"]  # only what is missing is named
    # CHECK of another container that owns nothing fails too
    assert node.exec("CHECK", conf, cid="c2")[0] == 1


def test_re_add_replaces_and_never_duplicates(node):
    add(node)
    before = node.owned_by("c1")
    add(node)  # identical re-ADD
    assert node.owned_by("c1") == before
    # restart: same container ID, new IP (runtimes.md): the DNAT now points at the new IP
    add(node, prev=prev_result("10.244.0.6/24", None))
    rows = [r for r in node.listing() if r["containerID"] == "c1" and r["family"] == 4]
    assert sorted(r["containerIP"] for r in rows) == ["10.244.0.6"] * 3
    assert len([e for k, e in node.owned_by("c1") if k == (4, "hostports")]) == 2


def test_del_is_idempotent_and_needs_no_prev_result(node):
    add(node, cid="c1")
    add(node, cid="c2", mappings=[port_mapping(7070, 70)], prev=prev_result("10.244.0.7/24"))
    no_prev = netconf(M)
    for _ in range(2):
        rc, out, err = node.exec("DEL", no_prev, cid="c1")
        assert (rc, out) == (0, ""), err
    assert node.owned_by("c1") == []          # masquerade entries found via the DNAT data
    assert len(node.owned_by("c2")) == 3       # the other container is untouched
    assert node.exec("DEL", no_prev, cid="never-added")[0] == 0


def test_del_without_port_mappings_still_cleans_up(node):
    """Upstream does nothing when the runtime omits portMappings on DEL; we scan for the owner."""
    add(node, cid="c1")
    add(node, cid="c2", mappings=[port_mapping(7070, 70)], prev=prev_result("10.244.0.7/24"))
    conf = {"cniVersion": "1.0.0", "name": "nlpm-test", "type": "portmap"}
    assert node.exec("DEL", conf, cid="c1")[0] == 0
    assert node.owned_by("c1") == [] and len(node.owned_by("c2")) == 3


def test_del_on_a_node_without_any_state_succeeds(node):
    assert node.exec("DEL", netconf(M, prev_result()), cid="c1")[:2] == (0, "")
    assert "nlportmap" not in node.ruleset()


def test_table_deleted_by_operator_between_add_and_del(node):
    add(node)
    node.host.run("nft", "delete", "table", "ip", "nlportmap")
    assert node.exec("DEL", netconf(M, prev_result("10.244.0.5/24", "fd00:244::5/64")), cid="c1")[0] == 0
    assert node.owned_by("c1") == []
    add(node)  # the next ADD rebuilds the table
    assert len(node.owned_by("c1")) == 8


BAD = [
    ("host port 0", {"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]}}, 7),
    ("host port 70000", {"runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}]}}, 7),
    ("container port -1", {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": -1, "protocol": "tcp"}]}}, 7),
    ("protocol icmp", {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}, 7),
    ("hostIP garbage", {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.300"}]}}, 7),
    ("port as string", {"runtimeConfig": {"portMappings": [{"hostPort": "80", "containerPort": 80, "protocol": "tcp"}]}}, 6),
    ("snat as string", {"snat": "true"}, 6),
    ("nft condition token", {"conditionsV4": ["tcp", "dport", "80"]}, 7),
    ("backend conflict", {"backend": "nftables", "externalSetMarkChain": "X"}, None),
    ("unknown backend", {"backend": "pf"}, None),
    ("mark bit 32", {"markMasqBit": 32}, None),
    ("no prevResult", {"prevResult": None}, 7),
    ("prevResult bad CIDR", {"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.999/24"}]}}, 6),
    ("prevResult other version family", {"prevResult": {"cniVersion": "0.4.0", "ips": []}}, 6),
]


@pytest.mark.parametrize("label,patch,code", BAD, ids=[b[0] for b in BAD])
def test_bad_config_fails_cleanly_and_changes_nothing(node, label, patch, code):
    add(node, cid="existing")
    before = node.ruleset()
    conf = netconf([port_mapping(8080, 80)], prev_result())
    conf.update(patch)
    conf = {k: v for k, v in conf.items() if v is not None}
    rc, out, err = node.exec("ADD", conf, cid="c-bad")
    assert rc == 1, (out, err)
    obj = json.loads(out)
    assert isinstance(obj["code"], int) and obj["msg"], obj
    if code is not None:
        assert obj["code"] == code, obj
    assert "Traceback" not in out + err
    assert node.ruleset() == before


def test_garbage_stdin_is_a_decode_error(node):
    rc, out, _ = node.exec("ADD", b"{not json", cid="c1")
    assert rc == 1 and json.loads(out)["code"] == 6
    rc, out, _ = node.exec("ADD", netconf(M, prev_result()), cid="bad/id")
    assert rc == 1 and json.loads(out)["code"] == 4


def test_version_answers_with_dummy_environment(node):
    rc, out, _ = node.exec("VERSION", {"cniVersion": "1.0.0"}, cid="", ifname="dummy", netns="dummy")
    assert rc == 0
    assert json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions":
                               ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_result_version_round_trips(node, version):
    prev = prev_result("10.244.0.5/24", None, version=version)
    out = add(node, cid="cv", prev=prev, version=version)
    assert out["cniVersion"] == version and out["ips"] == prev["ips"]
    assert node.exec("DEL", netconf(M, prev, version=version), cid="cv")[0] == 0


def test_legacy_0_2_0_result(node):
    prev = {"cniVersion": "0.2.0", "ip4": {"ip": "10.244.0.9/24", "gateway": "10.244.0.1"}}
    add(node, cid="old", prev=prev, version="0.2.0")
    assert {r["containerIP"] for r in node.listing() if r["containerID"] == "old"} == {"10.244.0.9"}


def test_concurrent_adds_and_dels_never_fail(node):
    """12 containers ADDed at once, then DELed at once, while a foreign nftables user
    commits in a loop (bumps the generation id): every call succeeds, state is exact."""
    stop = threading.Event()

    def foreign():
        i = 0
        while not stop.is_set() and i < 400:
            node.host.run("nft", "add", "table", "inet", f"other{i % 3}", check=False)
            i += 1

    churn = threading.Thread(target=foreign)
    churn.start()
    results = {}

    def one(cmd, n):
        prev = prev_result(f"10.244.0.{10 + n}/24", f"fd00:244::{10 + n:x}/64")
        conf = netconf([port_mapping(20000 + n, 80), port_mapping(30000 + n, 53, "udp")], prev)
        results[(cmd, n)] = node.exec(cmd, conf, cid=f"cc{n}")

    try:
        for cmd in ("ADD", "DEL"):
            ts = [threading.Thread(target=one, args=(cmd, n)) for n in range(12)]
            [t.start() for t in ts]
            [t.join() for t in ts]
            if cmd == "ADD":
                owned = {n: len(node.owned_by(f"cc{n}")) for n in range(12)}
                assert owned == {n: 4 + 1 + 2 for n in range(12)}
    finally:
        stop.set()
        churn.join()
    failures = {k: v for k, v in results.items() if v[0] != 0}
    assert not failures
    assert all(not node.owned_by(f"cc{n}") for n in range(12))


def test_operator_can_read_the_layout(node):
    add(node)
    text = node.ruleset()
    assert 'comment "nlportmap: CNI portmap hostPort forwarding' in text
    assert re.search(r'tcp \. 8080 comment "c1/eth0 nlpm-test @\d{13}" : 10\.244\.0\.5 \. 80', text), text
    assert "dnat ip to meta l4proto . th dport map @hostports" in text
    assert 'iifname != "lo" ip daddr 127.0.0.0/8' in text
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, "nft", "-j", "list", "ruleset"],
                        capture_output=True, text=True)
    assert cp.returncode == 0 and json.loads(cp.stdout)  # nft understands every object we wrote


def test_saved_ruleset_loads_back(node):
    """`nft list ruleset` output (an operator's backup) must be valid input for `nft -f`,
    also with conditions whose text holds quotes and wildcards."""
    add(node, conditionsV4=["iifname", '"eth*"', "ip", "saddr", "!=", "{ 192.0.2.0/24, 198.51.100.7 }"])
    prev = prev_result("10.244.0.8/24", ifname='e"t\\h')
    rc, out, err = node.exec("ADD", netconf([port_mapping(7000, 70)], prev), cid="q1", ifname='e"t\\h')
    assert rc == 0, (out, err)
    saved = node.ruleset()
    assert "iifname" in saved
    cp = node.host.run("nft", "-c", "-f", "-", input=saved, check=False, text=True)
    assert cp.returncode == 0, cp.stderr
    rc, _, err = node.exec("DEL", netconf([port_mapping(7000, 70)], prev), cid="q1", ifname='e"t\\h')
    assert rc == 0 and node.owned_by("q1") == [], err


def test_re_add_with_changed_mappings_then_partial_del_leaves_nothing(node):
    """Found by an adversarial review: DEL used to remove only the keys of the mappings it
    was given, so a port dropped by a re-ADD (or omitted by the runtime on DEL) stayed
    forwarded to a deleted pod.  The owner's manifest now lists what each ADD installed."""
    add(node, cid="c1", mappings=[port_mapping(8080, 80)], prev=prev_result("10.244.0.5/24"))
    add(node, cid="c1", mappings=[port_mapping(8081, 80)], prev=prev_result("10.244.0.5/24"))
    # the re-ADD already dropped 8080
    assert {(r["hostPort"], r["containerIP"]) for r in node.forwards_of("c1")} == {(8081, "10.244.0.5")}
    assert node.manifest_of("c1") == [(4, "tcp", None, 8081, "10.244.0.5")]
    # restart with a new IP: the old pod IP's masquerade elements go too
    add(node, cid="c1", mappings=[port_mapping(8081, 80), port_mapping(8082, 80)], prev=prev_result("10.244.0.6/24"))
    masq = {e[0] for k, e in node.owned_by("c1") if k[1] in ("masq_pairs", "masq_nets")}
    assert len(masq) == 2 and all(key.endswith("0af40006") for key in masq)  # 10.244.0.6 only
    # a DEL that names only one of the mappings still removes everything of c1
    rc, _, err = node.exec("DEL", netconf([port_mapping(8081, 80)], prev_result("10.244.0.6/24")), cid="c1")
    assert rc == 0, err
    assert node.owned_by("c1") == [] and node.manifest_of("c1") == []


@pytest.mark.parametrize("damage", [
    ["flush", "chain", "ip", "nlportmap", "hostports"],
    ["delete", "chain", "ip", "nlportmap", "localnet_guard"],
    ["flush", "chain", "ip", "nlportmap", "postrouting"],
    ["delete", "map", "ip", "nlportmap", "owned"],
], ids=["hostports-flushed", "guard-deleted", "postrouting-flushed", "manifest-deleted"])
def test_check_names_skeleton_damage_and_next_add_repairs_it(node, damage):
    add(node)
    conf = netconf(M, prev_result("10.244.0.5/24", "fd00:244::5/64"))
    node.host.run("nft", *damage)
    rc, out, _ = node.exec("CHECK", conf, cid="c1")
    assert rc == 1, out
    what = damage[-1]
    assert f"table ip nlportmap: {'set' if damage[1] == 'map' else 'chain'} {what}" in json.loads(out)["msg"]
    add(node, cid="c2", mappings=[port_mapping(7070, 70)], prev=prev_result("10.244.0.7/24"))
    assert node.exec("CHECK", conf, cid="c1")[0] == 0


def test_exit_leaves_the_netlink_release_to_a_short_lived_child(node, tmp_path):
    """A cold ADD/DEL answers, then exits at once; releasing its netfilter socket (which
    can wait for nf_tables' deferred cleanup after deletions) is left to a child that
    closes stdio first and is gone soon after.  Output and status are unaffected."""
    import os
    import time
    timings = tmp_path / "t.jsonl"
    env = {"NLPORTMAP_TIMINGS_FILE": str(timings), "NLPORTMAP_SOCKET": "none"}
    prev = prev_result("10.244.0.5/24", "fd00:244::5/64")
    rc, out, err = node.exec("ADD", netconf(M, prev), cid="c9", env=env)
    assert rc == 0 and json.loads(out)["ips"] == prev["ips"], err
    rc, out, err = node.exec("DEL", netconf(M, prev), cid="c9", env=env)
    assert (rc, out) == (0, ""), err
    assert not node.owned_by("c9")
    shim = [json.loads(ln) for ln in timings.read_text().splitlines() if "nlportmap_shim" in ln]
    assert [(s["nlportmap_shim"], s["detached_release"]) for s in shim] == [("ADD", True), ("DEL", True)]
    # no process of the plugin outlives the release for long
    exe = os.path.realpath(EXE)
    deadline = time.monotonic() + 5
    while True:
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if exe.encode() in f.read():
                        left.append(pid)
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, left


def test_re_add_with_another_prefix_or_ip_keeps_one_same_subnet_element(node):
    """masq_nets holds one range per pod; its intervals may overlap, so a re-ADD whose
    prefix (or IP) changed must replace the pod's element, not add a second one that
    DEL would never find (adversarial review)."""
    def nets():
        return sorted(e for e in node.elements().get((4, "masq_nets"), set()) if (e[2] or "").startswith("cpfx/"))

    for cidr in ("10.22.0.7/24", "10.22.0.7/8", "10.22.0.7/16", "10.22.0.7/8", "10.22.0.8/24"):
        add(node, cid="cpfx", mappings=[port_mapping(7000, 80, "udp")], prev=prev_result(cidr))
        assert len(nets()) == 1, (cidr, nets())
    rc, _, err = node.exec("DEL", netconf([port_mapping(7000, 80, "udp")], prev_result("10.22.0.8/24")), cid="cpfx")
    assert rc == 0, err
    assert nets() == []


def test_closed_stdin_is_code_5_and_closed_stdout_still_deletes(node, tmp_path):
    """A runtime that closes our stdin gets a CNI error (code 5), not a traceback; one that
    closes stdout still gets its DEL done (adversarial review)."""
    import os
    conf = netconf(M, prev_result("10.244.0.5/24"))
    add(node, cid="cfd", prev=prev_result("10.244.0.5/24"))
    env = {**os.environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cfd", "CNI_NETNS": "/run/netns/nonexistent",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, "sh", "-c", 'exec "$0" 0<&-', EXE],
                        capture_output=True, env=env, timeout=60)
    assert cp.returncode == 1 and json.loads(cp.stdout)["code"] == 5, (cp.stdout, cp.stderr)
    assert b"Traceback" not in cp.stderr
    stdin = tmp_path / "conf.json"
    stdin.write_text(json.dumps(conf))
    cp = subprocess.run(["ip", "netns", "exec", node.host.name, "sh", "-c", 'exec "$0" <"$1" 1>&-', EXE, str(stdin)],
                        capture_output=True, env={**env, "CNI_COMMAND": "DEL"}, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert not node.owned_by("cfd")
