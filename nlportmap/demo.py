"""``nlportmap demo``: the whole main job on throw-away namespaces, end to end.

Builds a node namespace (bridge ``cni0`` from the real ``bridge`` plugin,
uplink to a client namespace) and a pod, runs the chain bridge -> host-local
-> nlportmap exactly as a runtime would (exec, env vars, JSON on stdin), proves
TCP and UDP forwarding from the client, localhost and IPv6, shows
``nlportmap list``, runs DEL, proves the port is closed again and that nothing
of the pod is left, and tears everything down (also on failure).  Touches
nothing outside the namespaces it creates.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import suppress
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any, TextIO

    from netns_fixtures import Topology


def plugin_executable() -> str:
    """The executable a runtime should exec: the fast launcher ``nlportmap-cni`` (written
    by ``python3 -m nlportmap.launcher``, see docs/performance.md) when it exists and
    serves this very package, else the ``nlportmap`` console script."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bindir = os.path.dirname(sys.executable)
    fast = os.path.join(bindir, "nlportmap-cni")
    try:
        with open(fast) as f:
            if repr(here) in f.read() and os.access(fast, os.X_OK):
                return fast
    except OSError:
        pass
    cand = os.path.join(bindir, "nlportmap")
    if os.access(cand, os.X_OK):
        return cand
    found = shutil.which("nlportmap")
    if not found:
        raise FileNotFoundError("nlportmap is not installed (run scripts/setup.sh)")
    return found


def _chain_names(conflist: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for p in conflist["plugins"]:
        out.append(p["type"] if p["type"] != "portmap" else "nlportmap (type portmap)")
        if (p.get("ipam") or {}).get("type"):
            out.append(p["ipam"]["type"])
    return out


def _ms(s: float) -> str:
    return f"{s * 1000:7.1f} ms"


def run_demo(ipv6: bool = True, plugin: str | None = None, out: TextIO | None = None) -> int:
    """Run the demo; returns 0 when every proof passed, 1 otherwise."""
    from netns_fixtures import (Topology, echo_server, new_container_id, parse_echo,
                                port_mapping, tcp_probe, udp_request)
    out = out or sys.stdout
    exe = plugin or plugin_executable()
    ok = True

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    def proof(label: str, cond: bool, detail: str = "") -> None:
        nonlocal ok
        ok = ok and cond
        say(f"  [{'ok' if cond else 'FAIL'}] {label}{(' - ' + detail) if detail else ''}")

    fd, timings = tempfile.mkstemp(prefix="nlpm-demo-timings-", suffix=".jsonl")
    os.close(fd)
    env = {"NLPORTMAP_TIMINGS_FILE": timings}
    say(f"nlportmap demo: plugin under test = {exe}")
    try:
        with Topology(ipv6=ipv6, prefix="nlpm-demo", plugin_paths={"portmap": exe}) as t:
            say(f"built namespaces: node {t.host.name}, client {t.client.name} "
                f"({_ms(t.timings['build']).strip()})")
            pod = t.add_netns("pod")
            cid = new_container_id()
            mappings = [port_mapping(8080, 80, "tcp"), port_mapping(5353, 53, "udp"),
                        port_mapping(8081, 80, "tcp", t.host_ip4)]
            conflist = t.make_conflist({}, name="demo-net")
            say(f"chain: {' -> '.join(_chain_names(conflist))}; portMappings: "
                + ", ".join(f"{m['protocol']} {m.get('hostIP', '*')}:{m['hostPort']}->{m['containerPort']}"
                            for m in mappings))
            t0 = time.perf_counter()
            result = t.cni_chain_add(pod, cid, plugins_conf=conflist, extra_env=env,
                                     capability_args={"portMappings": mappings})
            chain_add = time.perf_counter() - t0
            pm_add = [s for c, ty, s in t.cni.timings if c == "ADD" and ty == "portmap"][-1]
            say(f"ADD chain done in {_ms(chain_add).strip()} (nlportmap exec: {_ms(pm_add).strip()}); "
                f"pod {pod.ip4}" + (f", {pod.ip6}" if pod.ip6 else ""))
            with echo_server(pod, proto="tcp", port=80), echo_server(pod, proto="udp", port=53):
                v6srv = echo_server(pod, proto="tcp", port=80, family=6) if ipv6 and pod.ip6 else None
                try:
                    say("proofs:")
                    r = tcp_probe(t.client, t.host_ip4, 8080)
                    proof(f"TCP client -> {t.host_ip4}:8080 reaches the pod", r.ok,
                          f"pod saw peer {parse_echo(r.data).peer}" if r.ok else r.status)
                    rep = udp_request(t.client, t.host_ip4, 5353, b"dns?")
                    proof(f"UDP client -> {t.host_ip4}:5353 round trip", rep is not None,
                          f"reply {rep!r}" if rep else "no reply")
                    r = tcp_probe(t.client, t.host_ip4, 8081)
                    proof(f"TCP client -> hostIP {t.host_ip4}:8081 reaches the pod", r.ok, r.status)
                    r = tcp_probe(t.host, "127.0.0.1", 8080)
                    proof("TCP node -> 127.0.0.1:8080 (route_localnet + masquerade)", r.ok,
                          f"pod saw peer {parse_echo(r.data).peer}" if r.ok else r.status)
                    if v6srv:
                        r = tcp_probe(t.client, t.host_ip6, 8080)
                        proof(f"TCP client -> [{t.host_ip6}]:8080 (IPv6) reaches the pod", r.ok, r.status)
                finally:
                    if v6srv:
                        v6srv.close()
                listing = t.host.run(exe, "list", check=False, env={**os.environ}, text=True)
                say("nlportmap list (inside the node namespace):")
                for line in (listing.stdout or listing.stderr).splitlines():
                    say("    " + line)
                t0 = time.perf_counter()
                t.cni_chain_del(pod, cid, extra_env=env, capability_args={"portMappings": mappings})
                say(f"DEL chain done in {_ms(time.perf_counter() - t0).strip()}")
                r = tcp_probe(t.client, t.host_ip4, 8080, timeout=1.0)
                proof("after DEL, client -> 8080 no longer reaches the pod", not r.ok, r.status)
                left = t.host.run(exe, "list", "--json", check=False, text=True)
                try:
                    rows = [x for x in json.loads(left.stdout or "[]") if x.get("containerID") == cid]
                except ValueError:
                    rows = ["unparsable list output"]
                proof("after DEL, nothing of the pod is left in the ruleset", not rows, f"{len(rows)} entries")
            del result
            ok = _daemon_phase(t, exe, conflist, env, say, proof) and ok
        say(f"namespaces removed ({_ms(t.timings.get('teardown', 0)).strip()})")
        _print_timings(timings, pm_add, say)
    finally:
        os.unlink(timings)
    say("demo " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


def _daemon_phase(t: Topology, exe: str, conflist: dict[str, Any], env: dict[str, str],
                  say: Callable[[str], None], proof: Callable[[str, bool, str], None]) -> bool:
    """Resident fast path: a daemon in the node namespace, a second pod ADDed through it."""
    import subprocess
    from netns_fixtures import echo_server, kill_process, new_container_id, port_mapping, tcp_probe
    sockdir = tempfile.mkdtemp(prefix="nlpm-demo-sock-")
    sock = os.path.join(sockdir, "daemon.sock")
    try:
        with open(os.path.join(sockdir, "daemon.log"), "w+") as log:
            daemon = t.host.popen(sys.executable, "-m", "nlportmap", "daemon", "--socket", sock,
                                  stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 30
                while not os.path.exists(sock) and daemon.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not os.path.exists(sock):
                    log.seek(0)
                    proof("resident daemon started", False, log.read()[-300:])
                    return False
                say(f"resident mode: 'nlportmap daemon' in the node namespace (pid {daemon.pid}), socket {sock}")
                denv = {**env, "NLPORTMAP_SOCKET": sock}
                pod, cid, maps = t.add_netns("pod"), new_container_id(), [port_mapping(9090, 80)]
                t.cni_chain_add(pod, cid, plugins_conf=conflist, extra_env=denv, capability_args={"portMappings": maps})
                wall = [s for c, ty, s in t.cni.timings if c == "ADD" and ty == "portmap"][-1]
                say(f"  second pod ADDed through the daemon: nlportmap exec {_ms(wall).strip()} (whole process)")
                with echo_server(pod, proto="tcp", port=80):
                    r = tcp_probe(t.client, t.host_ip4, 9090)
                    proof(f"TCP client -> {t.host_ip4}:9090 reaches the second pod (daemon path)", r.ok, r.status)
                t.cni_chain_del(pod, cid, extra_env=denv, capability_args={"portMappings": maps})
                r = tcp_probe(t.client, t.host_ip4, 9090, timeout=1.0)
                proof("after DEL through the daemon, 9090 no longer reaches the pod", not r.ok, r.status)
                return True
            finally:
                kill_process(daemon)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _print_timings(path: str, wall_add: float, say: Callable[[str], None]) -> None:
    rows: list[dict[str, Any]] = []
    with open(path) as f:
        for line in f:
            with suppress(ValueError):
                rows.append(json.loads(line))
    add = next((r for r in rows if r.get("nlportmap") == "ADD"), None)
    if not add:
        return
    ph = add["timings_ms"]
    inside = sum(ph.values())
    say("one nlportmap ADD, per phase (wall time of the exec'd process):")
    labels = {"decode": "imports + env/stdin/config decode", "plan": "plan (pure)",
              "backend_select": "backend choice (nf_tables probe)", "transaction": "transaction (reads + batch)",
              "side_effects": "side effects (conntrack, sysctl)"}
    say(f"  {'process start (interpreter, ip netns exec)':42s} {wall_add * 1000 - inside:7.1f} ms")
    for k in ("decode", "plan", "backend_select", "transaction", "side_effects"):
        if k in ph:
            say(f"  {labels[k]:42s} {ph[k]:7.1f} ms")
    say(f"  {'total':42s} {wall_add * 1000:7.1f} ms")
