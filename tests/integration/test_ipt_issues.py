"""iptables backend, issue 16 items 1-2 and issue 12 items 3, 4, 6: run as a runtime would.

Every test execs the plugin (env vars + config on stdin) inside a throw-away node
namespace (``Node.exec``), with ``"backend": "iptables"``, and reads the rules back
with ``iptables-save`` / real traffic.  Tool availability is varied with a private
PATH directory (symlinks to the real tools, minus one, or logging wrappers in front
of them); nothing outside the test's namespaces is touched.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from netns_fixtures import echo_server, parse_echo, port_mapping, tcp_probe, udp_request
from nlpm_helpers import EXE, Node, netconf, prev_result

pytestmark = pytest.mark.root

SBIN = "/usr/sbin"
FIREWALL_TOOL = re.compile(r"^(ip6?tables.*|nft|conntrack|xtables.*|ebtables.*|arptables.*)$")


# ------------------------------------------------------------------ helpers
def _bin_dir(tmp_path, name: str, *, missing=(), failing=(), log: str | None = None) -> str:
    """A PATH directory mirroring /usr/sbin: ``missing`` names left out, ``failing`` names
    replaced by a script that exits 1, and (with ``log``) every firewall tool wrapped by a
    script that appends its argv to ``log`` before exec-ing the real tool."""
    d = tmp_path / name
    d.mkdir()
    for entry in os.listdir(SBIN):
        if entry in missing:
            continue
        target = d / entry
        if entry in failing:
            target.write_text("#!/bin/sh\necho \"$0: simulated failure\" >&2\nexit 1\n")
            target.chmod(0o755)
        elif log and FIREWALL_TOOL.match(entry):
            target.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {log}\nexec {SBIN}/{entry} \"$@\"\n")
            target.chmod(0o755)
        else:
            target.symlink_to(os.path.join(SBIN, entry))
    return f"{d}:/usr/bin:/bin"


def _conf(maps, prev, **extra) -> dict:
    return netconf(maps, prev, name="ipt-issues", backend="iptables", **extra)


def _state(node: Node) -> dict[str, str]:
    """nat (both families) and raw (IPv4), counters zeroed, comments dropped."""
    out = {}
    for tool, table in (("iptables-save", "nat"), ("ip6tables-save", "nat"), ("iptables-save", "raw")):
        text = node.host.run(tool, "-t", table, text=True).stdout
        out[f"{tool} {table}"] = "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", ln)
                                           for ln in text.splitlines() if not ln.startswith("#"))
    return out


def _err(out: str) -> dict:
    return json.loads(out)


@pytest.fixture
def node_pm(topology_factory) -> Node:
    """Dual-stack node whose pods live in 10.88.0.0/16 and fd88::/64 (issue 16.1's addresses)."""
    return Node(topology_factory(plugin_paths={"portmap": EXE}, pod_subnet4="10.88.0.0/16",
                                 pod_subnet6="fd88::/64", prefix="nlpm-iptis"))


# ------------------------------------------------------------------ issue 12.3
@pytest.mark.parametrize("runtime_config", [None, {"portMappings": []}], ids=["no-runtimeConfig", "empty"])
def test_del_without_mappings_runs_no_tool_when_nothing_is_owned(node4, tmp_path, runtime_config):
    log = tmp_path / "execs.log"
    path = _bin_dir(tmp_path, "logged", log=str(log))
    conf = _conf([], prev_result("10.244.0.9/24"))
    if runtime_config is None:
        del conf["runtimeConfig"]
    else:
        conf["runtimeConfig"] = runtime_config
    # a node whose nat tables do not exist at all, then one where another container's
    # rules exist (the nat table is there, this container's chain is not)
    for other in (False, True):
        if other:
            rc, out, err = node4.exec("ADD", _conf([port_mapping(8300, 80)], prev_result("10.244.0.8/24")),
                                      cid="other")
            assert rc == 0, (out, err)
        for _ in range(2):  # DEL is idempotent
            rc, out, err = node4.exec("DEL", conf, cid="never-added", env={"PATH": path})
            assert (rc, out) == (0, ""), err
        assert not log.exists(), log.read_text()


@pytest.mark.parametrize("runtime_config", [None, {"portMappings": []}], ids=["no-runtimeConfig", "empty"])
def test_del_without_mappings_still_removes_what_the_container_owns(node, tmp_path, runtime_config):
    prev = prev_result("10.244.0.9/24", "fd00:244::9/64")
    rc, out, err = node.exec("ADD", _conf([port_mapping(8301, 80)], prev), cid="owner")
    assert rc == 0, (out, err)
    assert "--dport 8301" in node.host.run("iptables-save", "-t", "nat", text=True).stdout
    conf = _conf([], prev)
    if runtime_config is None:
        del conf["runtimeConfig"]
    else:
        conf["runtimeConfig"] = runtime_config
    rc, out, err = node.exec("DEL", conf, cid="owner")
    assert (rc, out) == (0, ""), err
    for tool in ("iptables-save", "ip6tables-save"):
        text = node.host.run(tool, "-t", "nat", text=True).stdout
        assert "CNI-DN-" not in text and "8301" not in text, text


# ------------------------------------------------------------------ issue 12.6
@pytest.mark.parametrize("token", ['eth0"x', "e\\y"], ids=["quote", "backslash"])
def test_del_removes_rules_with_unwritable_tokens_installed_by_an_older_version(node4, token):
    """Upstream portmap (the Debian binary) installs such a rule without complaint; so
    did nlportmap before it validated tokens.  DEL must remove it, never wedge."""
    from test_ipt_backend import UPSTREAM
    maps = [port_mapping(8601, 80)]
    conf = _conf(maps, prev_result("10.244.0.9/24"), conditionsV4=["-i", token])
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "old", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    up = dict(conf)
    up.pop("backend")  # upstream v1.1.1 predates the option
    cp = node4.host.run(UPSTREAM, input=json.dumps(up), env=env, check=False, text=True)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    # one entry rule of another container after it: must survive
    rc, out, err = node4.exec("ADD", _conf([port_mapping(8602, 80)], prev_result("10.244.0.8/24")), cid="keep")
    assert rc == 0, (out, err)
    assert "CNI-DN-" in node4.host.run("iptables-save", "-t", "nat", text=True).stdout
    for c in (conf, _conf(maps, prev_result("10.244.0.9/24"))):  # with and without the bad tokens
        rc, out, err = node4.exec("DEL", c, cid="old")
        assert (rc, out) == (0, ""), (out, err)
    text = node4.host.run("iptables-save", "-t", "nat", text=True).stdout
    assert "8601" not in text and '"old"' not in text, text
    assert 'id: \\"keep\\"' in text and "--dport 8602" in text, text
