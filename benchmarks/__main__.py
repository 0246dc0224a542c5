"""Pod-start latency benchmark: ``python3 -m benchmarks [--quick]`` (root; see benchmarks/README.md).

For every plugin configuration and backlog size it builds a fresh node namespace
(plus a client and a pod namespace, via netns_fixtures), fills the node with the
mappings of N existing containers (real kernel state, large batches), and from a
driver process *inside* the node namespace execs the plugin exactly as a runtime
does.  Configurations: nlportmap-cold (the file ``nlportmap install`` writes, no
daemon), nlportmap-daemon (same file + ``nlportmap daemon``), upstream-nft (upstream
HEAD's Go portmap, ``"backend": "nftables"``) and upstream-iptables (Debian's 1.1.1).
Measured: whole-process wall time of VERSION, ADD, CHECK, DEL and containerd's
second DEL without netns and prevResult (DEL-nostate) (p50, p90, exit statuses,
peak RSS), 50 concurrent ADDs (wall time, failures), and the latency of a new TCP
connection's first packet through a hostPort (client connect() -> SYN-ACK from
the pod, i.e. DNAT of a new flow) at 0 and the largest backlog.  The targets of
issues 10 and 15 are computed from the same run (reported, never asserted).

Writes ``results.json``, ``results.md`` (the tables) and PNG plots to ``--out``.
Touches nothing outside the namespaces it creates; always tears them down.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "netns-fixtures"))

UPSTREAM = "/usr/lib/cni/portmap"  # Debian's containernetworking-plugins 1.1.1: iptables only
#: upstream HEAD built from source, with the nftables backend (see its README), relative to
#: the project root: the main checkout's parent (a worktree elsewhere finds it through git)
UPSTREAM_NFT_REL = os.path.join("..", "shared", "upstream-portmap", "portmap")
PROBE_PORT = 8080
OPS = ("VERSION", "ADD", "CHECK", "DEL", "DEL-nostate")
#: old configuration names (--only) -> current ones
ALIASES = {"nlportmap-inproc": "nlportmap-cold"}


# ----------------------------------------------------------------- helpers
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(walls: list[float], rss: list[int] | None = None, rcs: list[int] | None = None) -> dict:
    d = {"n": len(walls), "p50_ms": _ms(pct(walls, 0.5)), "p90_ms": _ms(pct(walls, 0.9)),
         "min_ms": _ms(min(walls) if walls else None)}
    if rcs is not None:
        d["exit_statuses"] = {str(c): rcs.count(c) for c in sorted(set(rcs))}
    if rss:
        d["peak_rss_mib"] = round(max(rss) / 1024, 2)
    return d


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 3)


def sh(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = open("/proc/meminfo").readline().split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import pyroute2  # noqa: F401
        from importlib.metadata import version
        pr2 = version("pyroute2")
    except Exception:  # noqa: BLE001
        pr2 = "?"
    deb = sh("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins")
    return {
        "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "python": platform.python_version(), "python_executable": sys.executable,
        "pyroute2": pr2, "nftables": sh("nft", "--version"), "iptables": sh("iptables", "--version"),
        "containernetworking-plugins (Debian)": deb, "os": sh("sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "nlportmap_commit": sh("git", "-C", REPO, "rev-parse", "--short", "HEAD"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


class Config:
    """One plugin configuration under test."""

    def __init__(self, name: str, exe: str, fill: str, env: dict | None = None,
                 backend: str | None = None, daemon: bool = False, label: str = "",
                 no_daemon_socket: bool = False):
        self.name, self.exe, self.fill, self.env = name, exe, fill, dict(env or {})
        self.backend, self.daemon, self.label = backend, daemon, label or name
        self.no_daemon_socket = no_daemon_socket


def driver(ns, job: dict, timeout: float = 900) -> dict:
    cp = ns.run(sys.executable, "-m", "benchmarks.driver", input=json.dumps(job), timeout=timeout,
                env={"PYTHONPATH": REPO + os.pathsep + os.path.join(REPO, "netns-fixtures")},
                check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"driver {job['op']} failed: {cp.stderr[-3000:]}")
    return json.loads(cp.stdout)


#: nlportmap's lock files and self-healing records go to the run's own work dir (removed at
#: the end), never to the node's /run/nlportmap: set in main()
PRIVATE_DIRS: dict[str, str] = {}


def start_daemon(ns, sock: str, log: str):
    f = open(log, "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NLPORTMAP_"))}
    env.update(PRIVATE_DIRS)  # the same lock and record dirs as the plugin calls (the daemon checks)
    p = ns.popen(sys.executable, "-m", "nlportmap", "daemon", "--socket", sock, env=env,
                 stdout=f, stderr=subprocess.STDOUT)
    f.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "listening on" in open(log).read():
            return p
        if p.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError("daemon did not start:\n" + open(log).read())


def stop_daemon(p) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)  # by PID: the process we started
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)


def first_packet(t, pod, n: int) -> list[float]:
    """Latency of connect() (SYN -> SYN-ACK through DNAT) of n new TCP connections."""
    srv = pod.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 80))
    srv.listen(4096)
    stop = threading.Event()

    def drain() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                continue

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    out = []
    try:
        socks = t.client.call(lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n + 5)])
        for k, s in enumerate(socks):
            s.settimeout(3)
            t0 = time.perf_counter()
            try:
                s.connect((t.host_ip4, PROBE_PORT))
                dt = time.perf_counter() - t0
                if k >= 5:  # the first few warm ARP/neighbour and route caches
                    out.append(dt)
            except OSError:
                pass
            finally:
                s.close()
    finally:
        stop.set()
        th.join(2)
        srv.close()
    return out


# ------------------------------------------------------------------ one run
def run_config(cfg: Config, backlog: int, args, workdir: str, measure_latency: bool,
               concurrency: bool) -> dict:
    from netns_fixtures import Topology
    res: dict = {"backlog": backlog}
    with Topology(ipv6=False, prefix="nlpm-bench") as t:
        pod = t.add_pod_manual("pod")
        base_env = {**cfg.env, **PRIVATE_DIRS, "CNI_NETNS": pod.path}
        daemon = None
        try:
            if cfg.daemon:
                sock = os.path.join(workdir, f"d-{t.suffix}.sock")
                daemon = start_daemon(t.host, sock, os.path.join(workdir, f"daemon-{cfg.name}-{backlog}.log"))
                base_env["NLPORTMAP_SOCKET"] = sock
            elif cfg.no_daemon_socket:
                # a node without a daemon: the default socket path does not exist (a daemon
                # of someone else's in the root namespace must not be reached)
                base_env["NLPORTMAP_SOCKET"] = os.path.join(workdir, "no-daemon", "daemon.sock")
            job = {"exe": cfg.exe, "env": base_env, "backend": cfg.backend}
            seed = driver(t.host, {**job, "op": "exec", "command": "ADD", "index": 8_000_000,
                                   "ip": "10.244.250.250", "port": 9999})
            if seed["rc"] != 0:
                raise RuntimeError(f"{cfg.name}: seed ADD failed: {seed.get('error')}")
            if backlog:
                res["fill"] = driver(t.host, {"op": "fill", "impl": cfg.fill, "n": backlog})
            cyc = driver(t.host, {**job, "op": "cycle", "samples": args.samples, "ops": list(OPS),
                                  "first": 1_000_000, "max_seconds": args.cycle_seconds,
                                  "baseline_argv": [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]})
            if cyc.get("BASE"):
                res["BASE"] = summary([w for w, _ in cyc["BASE"]], None)
            for command in OPS:
                rss = cyc["rss_kib"].get(command)
                res[command] = summary([w for w, _ in cyc[command]], [rss] if rss else None,
                                       [rc for _, rc in cyc[command]])
            firsts: dict = {}
            for f in cyc["failures"]:  # the first failure of each op, for the record
                firsts.setdefault(f["command"], f)
            res["failures"] = list(firsts.values())
            res["failure_count"] = len(cyc["failures"])
            if "truncated" in cyc:
                res["truncated_at"] = cyc["truncated"]
            if concurrency:
                conc = driver(t.host, {**job, "op": "concurrent", "n": args.concurrent, "first": 2_000_000})
                res["concurrent"] = {c: {"n": args.concurrent, "wall_ms": _ms(conc[c]["wall"]),
                                         "per_process_p50_ms": _ms(pct(conc[c]["per_process"], 0.5)),
                                         "per_process_max_ms": _ms(max(conc[c]["per_process"] or [0])),
                                         "failures": len(conc[c]["failures"]),
                                         "first_failure": (conc[c]["failures"] or [""])[0][:500]}
                                     for c in ("ADD", "DEL")}
            if measure_latency:
                r = driver(t.host, {**job, "op": "exec", "command": "ADD", "index": 9_000_000,
                                    "ip": pod.ip4, "port": PROBE_PORT})
                if r["rc"] != 0:
                    raise RuntimeError(f"{cfg.name}: probe ADD failed: {r.get('error')}")
                lat = first_packet(t, pod, args.probes)
                res["first_packet"] = {"n": len(lat), "p50_us": round(pct(lat, 0.5) * 1e6, 1) if lat else None,
                                       "p90_us": round(pct(lat, 0.9) * 1e6, 1) if lat else None,
                                       "lost": args.probes - len(lat)}
        finally:
            if daemon is not None:
                stop_daemon(daemon)
    return res


# ------------------------------------------------------------------ report
def ratio(a, b) -> float | None:
    if a is None or b in (None, 0):
        return None
    return round(a / b, 3)


COLD, DAEMON, UP_NFT, UP_IPT = "nlportmap-cold", "nlportmap-daemon", "upstream-nft", "upstream-iptables"


def mid_size(sizes: list[int]) -> int:
    """The "1,000 containers" of the targets: 1000 when measured, else the largest size."""
    return 1000 if 1000 in sizes else max(sizes)


def targets(results: dict, baseline: dict, sizes: list[int]) -> list[dict]:
    """Issue 10 (item 3) and issue 15 (part 2) targets, all from this run's numbers."""
    mid = mid_size(sizes)
    rows = []

    def p50(cfg, size, op):
        return ((results.get(cfg, {}).get(str(size)) or {}).get(op) or {}).get("p50_ms")

    def row(issue, name, value, limit, ok=None, unit="", note=""):
        if ok is None and value is not None:
            ok = value <= limit
        rows.append({"issue": issue, "target": name, "value": value, "limit": limit, "unit": unit,
                     "met": None if value is None else bool(ok), "note": note})

    for size in sorted({0, mid}):
        row(10, f"cold ADD p50 / upstream-nft ADD p50, at {size}", ratio(p50(COLD, size, "ADD"),
                                                                         p50(UP_NFT, size, "ADD")), 0.8)
    for op in ("CHECK", "DEL"):
        row(10, f"cold {op} p50 / upstream-nft {op} p50, at {mid}",
            ratio(p50(COLD, mid, op), p50(UP_NFT, mid, op)), 0.5)
    cold0 = results.get(COLD, {}).get("0") or {}
    bare = (cold0.get("BASE") or {}).get("p50_ms") or baseline.get("p50_ms")
    row(10, "cold ADD p50 / bare `python3 -I -S -c pass` p50 (interleaved), at 0",
        ratio(p50(COLD, 0, "ADD"), bare), 4)
    rss = [((results.get(COLD, {}).get(str(sz)) or {}).get("ADD") or {}).get("peak_rss_mib") for sz in sizes]
    rss = [r for r in rss if r]
    row(10, "cold ADD peak RSS (max over sizes)", max(rss) if rss else None, 15, unit="MiB")
    for op in ("ADD", "CHECK", "DEL"):
        row(10, f"cold {op} p50 at {mid} / at 0", ratio(p50(COLD, mid, op), p50(COLD, 0, op)), 1.2)
    row(10, "daemon ADD p50 / upstream-nft ADD p50, at 0", ratio(p50(DAEMON, 0, "ADD"), p50(UP_NFT, 0, "ADD")), 0.4)
    for size in sorted({0, mid}):
        row(15, f"cold DEL-nostate p50 / upstream-nft DEL-nostate p50, at {size}",
            ratio(p50(COLD, size, "DEL-nostate"), p50(UP_NFT, size, "DEL-nostate")), 0.3)
        v = ratio(p50(COLD, size, "DEL-nostate"), p50(UP_IPT, size, "DEL-nostate"))
        rows.append({"issue": 15, "target": f"cold DEL-nostate p50 / upstream-iptables DEL-nostate p50, at {size} "
                     "(information)", "value": v, "limit": None, "unit": "", "met": None, "note": "information"})
    for size in sorted({0, mid}):
        a, b = p50(COLD, size, "DEL-nostate"), p50(COLD, size, "VERSION")
        v = None if a is None or b is None else round(a - b, 3)
        row(15, f"cold DEL-nostate p50 - cold VERSION p50, at {size}", v, 5, unit="ms")
    return rows


def render(report: dict) -> str:
    res, sizes = report["results"], report["args"]["sizes"]
    lines = ["# nlportmap pod-start benchmark", "",
             "Machine: " + ", ".join(f"{k}: {v}" for k, v in report["machine"].items()), "",
             f"Mode: {'quick' if report['args']['quick'] else 'full'}; {report['args']['samples']} samples per op "
             f"(cycle loop capped at {report['args']['cycle_seconds']:.0f} s per point); "
             f"{report['args']['probes']} first-packet probes; total {report['seconds']:.0f} s", "",
             "Configurations: " + "; ".join(f"`{n}`: {d}" for n, d in report.get("configurations", {}).items()), "",
             f"Baseline `python3 -I -S -c pass` (same exec path): p50 {report['baseline']['p50_ms']} ms, "
             f"p90 {report['baseline']['p90_ms']} ms, peak RSS {report['baseline'].get('peak_rss_mib')} MiB", "",
             "## Whole-process wall time per invocation (ms, spawn to reap)", "",
             "`bare` = `python3 -I -S -c pass`, interleaved with the cycles (right before each ADD). "
             "`non-zero exits` counts per op (upstream-iptables 1.1.1's CHECK always fails; "
             "DEL-nostate may fail upstream: its time counts either way).", "",
             "| plugin | containers | n | VERSION p50 | ADD p50 | ADD p90 | CHECK p50 | CHECK p90 | DEL p50 | DEL p90 "
             "| DEL-nostate p50 | DEL-nostate p90 | bare p50 | non-zero exits |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, per in res.items():
        for s in sizes:
            r = per.get(str(s))
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {name} | {s} | error: {r['error'][:80]} ||||||||||||")
                continue
            g = lambda c, k: (r.get(c) or {}).get(k)  # noqa: E731
            bad = ", ".join(f"{c} {sum(v for k, v in (g(c, 'exit_statuses') or {}).items() if k != '0')}"
                            f"/{g(c, 'n')}" for c in OPS
                            if any(k != "0" for k in (g(c, "exit_statuses") or {})))
            n = g("ADD", "n")
            if "truncated_at" in r:
                n = f"{n} (capped)"
            lines.append(f"| {name} | {s} | {n} | {g('VERSION', 'p50_ms')} | {g('ADD', 'p50_ms')} | {g('ADD', 'p90_ms')} "
                         f"| {g('CHECK', 'p50_ms')} | {g('CHECK', 'p90_ms')} | {g('DEL', 'p50_ms')} | {g('DEL', 'p90_ms')} "
                         f"| {g('DEL-nostate', 'p50_ms')} | {g('DEL-nostate', 'p90_ms')} | {g('BASE', 'p50_ms')} "
                         f"| {bad or '-'} |")
    lines += ["", "## Peak RSS per invocation (MiB, one run under /usr/bin/time)", "",
              "| plugin | containers | " + " | ".join(OPS) + " |", "|---|---:|" + "---:|" * len(OPS)]
    for name, per in res.items():
        for s in sizes:
            r = per.get(str(s))
            if r and "error" not in r:
                lines.append(f"| {name} | {s} | " + " | ".join(str((r.get(c) or {}).get("peak_rss_mib"))
                                                               for c in OPS) + " |")
    lines += ["", "## First packet of a new TCP connection through a hostPort (connect() latency, µs)", "",
              "| plugin | existing containers | p50 | p90 | probes | lost |", "|---|---:|---:|---:|---:|---:|"]
    for name, per in res.items():
        for s in sizes:
            fp = (per.get(str(s)) or {}).get("first_packet")
            if fp:
                lines.append(f"| {name} | {s} | {fp['p50_us']} | {fp['p90_us']} | {fp['n']} | {fp['lost']} |")
    lines += ["", f"## {report['args']['concurrent']} concurrent invocations on an empty node", "",
              "| plugin | command | batch wall ms | per-process p50 ms | per-process max ms | failures |",
              "|---|---|---:|---:|---:|---:|"]
    for name, per in res.items():
        conc = (per.get("0") or {}).get("concurrent") or {}
        for c, v in conc.items():
            lines.append(f"| {name} | {c} | {v['wall_ms']} | {v['per_process_p50_ms']} | "
                         f"{v['per_process_max_ms']} | {v['failures']} |")
    lines += ["", "## Targets (issues 10 and 15) — from this run, reported, never asserted", "",
              "| issue | target | value | limit | met |", "|---|---|---:|---:|---|"]
    for t in report["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        if t["limit"] is None:
            met = "(information)"
        unit = f" {t['unit']}" if t.get("unit") and t["value"] is not None else ""
        lim = "" if t["limit"] is None else f"{t['limit']}{' ' + t['unit'] if t.get('unit') else ''}"
        lines.append(f"| {t['issue']} | {t['target']} | {t['value']}{unit} | {lim} | {met} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (pip install -e '.[bench]')", file=sys.stderr)
        return []
    res, sizes = report["results"], report["args"]["sizes"]
    files = []
    fig, grid = plt.subplots(2, 3, figsize=(16, 9.5))
    axes = list(grid.flat)
    colours: dict = {}
    # the bare interpreter's p50 as the targets use it: interleaved with the cold ADDs
    bare = (((res.get(COLD) or {}).get("0") or {}).get("BASE") or {}).get("p50_ms") or report["baseline"]["p50_ms"]
    for ax, c in zip(axes, OPS):
        for name, per in res.items():
            xs = [s for s in sizes if (per.get(str(s)) or {}).get(c)]
            if not xs:
                continue
            p50 = [per[str(s)][c]["p50_ms"] for s in xs]
            p90 = [per[str(s)][c]["p90_ms"] for s in xs]
            line, = ax.plot(xs, p50, marker="o", label=name, color=colours.get(name))
            colours[name] = line.get_color()
            ax.fill_between(xs, p50, p90, alpha=0.15, color=line.get_color())
        ax.axhline(bare, color="grey", ls=":", lw=1, label="bare python3 -I -S -c pass (p50, interleaved)")
        ax.set_title(f"{c}: whole-process wall time (p50, band to p90)", fontsize=10)
        ax.set_xlabel("existing containers' mappings on the node")
        ax.set_ylabel("ms")
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    ax = axes[len(OPS)]  # the sixth panel: peak RSS of ADD
    for name, per in res.items():
        xs = [s for s in sizes if ((per.get(str(s)) or {}).get("ADD") or {}).get("peak_rss_mib")]
        if xs:
            ax.plot(xs, [per[str(s)]["ADD"]["peak_rss_mib"] for s in xs], marker="o", label=name,
                    color=colours.get(name))
    if report["baseline"].get("peak_rss_mib"):
        ax.axhline(report["baseline"]["peak_rss_mib"], color="grey", ls=":", lw=1, label="bare python3")
    ax.axhline(15, color="red", ls="--", lw=0.8, label="cold target (15 MiB)")
    ax.set_title("ADD: peak RSS (/usr/bin/time)", fontsize=10)
    ax.set_xlabel("existing containers' mappings on the node")
    ax.set_ylabel("MiB")
    ax.set_xscale("symlog", linthresh=1000)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out, "latency_vs_backlog.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for name, per in res.items():
        xs = [s for s in sizes if (per.get(str(s)) or {}).get("first_packet", {}).get("p50_us")]
        if xs:
            ax.plot(xs, [per[str(s)]["first_packet"]["p50_us"] for s in xs], marker="o", label=name)
    ax.set_title("first packet of a new TCP connection via hostPort (p50)")
    ax.set_xlabel("existing containers' mappings on the node")
    ax.set_ylabel("µs")
    ax.set_xscale("symlog", linthresh=1000)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out, "first_packet_vs_backlog.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)
    return files


# -------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="sizes 0,1000 (unless --sizes), fewer samples and probes (under a minute on 2 cores)")
    p.add_argument("--sizes", default=None, help="existing containers per node (comma list; default "
                                                 "0,1000,10000, quick 0,1000)")
    p.add_argument("--samples", type=int, default=None,
                   help="VERSION/ADD/CHECK/DEL/DEL-nostate cycles per point (default 25, quick 10)")
    p.add_argument("--probes", type=int, default=None, help="first-packet connections (default 300, quick 100)")
    p.add_argument("--concurrent", type=int, default=50, help="concurrent ADDs on the empty node")
    p.add_argument("--cycle-seconds", type=float, default=None,
                   help="cap on one point's cycle loop, at least 3 cycles run (default 60, quick 20)")
    p.add_argument("--upstream-nft", default=None, metavar="PATH",
                   help="upstream HEAD's portmap, run with \"backend\": \"nftables\" (default: "
                        f"{UPSTREAM_NFT_REL} from the project root; skipped with a note if missing)")
    p.add_argument("--upstream-iptables", default=UPSTREAM, metavar="PATH",
                   help=f"Debian's portmap (iptables only; default {UPSTREAM})")
    p.add_argument("--plugin", action="append", default=[], metavar="NAME=PATH[,nftables|iptables]",
                   help="another portmap executable to measure (configuration extra-NAME)")
    p.add_argument("--only", default="", help="comma list of configuration names to run "
                                              f"({COLD}, {DAEMON}, {UP_NFT}, {UP_IPT}, extra-NAME)")
    p.add_argument("--no-upstream", action="store_true", help="skip both upstream configurations")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    a = p.parse_args(argv)
    sizes = a.sizes or ("0,1000" if a.quick else "0,1000,10000")
    a.sizes = sorted({int(x) for x in sizes.split(",") if x.strip()})
    if 0 not in a.sizes:
        a.sizes.insert(0, 0)
    a.samples = a.samples or (10 if a.quick else 25)
    a.probes = a.probes or (100 if a.quick else 300)
    a.cycle_seconds = a.cycle_seconds or (20 if a.quick else 60)
    return a


def find_upstream_nft(explicit: str | None) -> str:
    """--upstream-nft, else ../shared/upstream-portmap/portmap from the project root: this
    checkout's parent, or, in a git worktree, the main checkout's parent."""
    if explicit:
        return os.path.abspath(explicit)
    roots = [REPO]
    common = sh("git", "-C", REPO, "rev-parse", "--path-format=absolute", "--git-common-dir")
    if common:
        roots.append(os.path.dirname(common))
    cands = [os.path.normpath(os.path.join(r, UPSTREAM_NFT_REL)) for r in roots]
    return next((c for c in cands if os.access(c, os.X_OK)), cands[0])


def configs(args, launcher: str) -> list[Config]:
    out = [Config(COLD, launcher, "nlportmap", no_daemon_socket=True,
                  label="the launcher `nlportmap install` wrote, no daemon (socket path absent)"),
           Config(DAEMON, launcher, "nlportmap", daemon=True,
                  label="the same launcher + `nlportmap daemon` in the node namespace")]
    if not args.no_upstream:
        nft = find_upstream_nft(args.upstream_nft)
        if os.access(nft, os.X_OK):
            out.append(Config(UP_NFT, nft, "nftables", backend="nftables",
                              label=f"upstream HEAD {nft}, \"backend\": \"nftables\""))
        else:
            print(f"note: {nft} missing: {UP_NFT} skipped (--upstream-nft PATH)", file=sys.stderr)
        if os.access(args.upstream_iptables, os.X_OK):
            out.append(Config(UP_IPT, args.upstream_iptables, "iptables",
                              label=f"Debian's {args.upstream_iptables} (1.1.1, iptables only)"))
        else:
            print(f"note: {args.upstream_iptables} missing: {UP_IPT} skipped", file=sys.stderr)
    for spec in args.plugin:
        name, _, rest = spec.partition("=")
        path, _, backend = rest.partition(",")
        backend = backend or "iptables"
        out.append(Config(f"extra-{name}", path, "nftables" if backend == "nftables" else "iptables",
                          backend=backend, label=f"{path}, backend {backend}"))
    if args.only:
        keep = {ALIASES.get(n, n) for n in args.only.split(",")}
        out = [c for c in out if c.name in keep]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: needs root (network namespaces)", file=sys.stderr)
        return 1
    from netns_fixtures import cleanup_stale
    cleanup_stale("nlpm-bench")
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="nlpm-bench-")
    t_start = time.perf_counter()
    for key, sub_dir in (("NLPORTMAP_LOCK_DIR", "locks"), ("NLPORTMAP_STATE_DIR", "state")):
        PRIVATE_DIRS[key] = os.path.join(workdir, sub_dir)
        os.environ[key] = PRIVATE_DIRS[key]  # also for the driver's own fill transactions
    try:
        # the cold install: exactly the file `nlportmap install` writes into a CNI bin dir
        bindir = os.path.join(workdir, "cni-bin")
        cp = subprocess.run([sys.executable, "-m", "nlportmap", "install", "--cni-bin-dir", bindir,
                             "--name", "portmap"], capture_output=True, text=True)
        if cp.returncode != 0:
            print(f"benchmarks: nlportmap install failed:\n{cp.stdout}{cp.stderr}", file=sys.stderr)
            return 1
        launcher = os.path.join(bindir, "portmap")
        report: dict = {"machine": machine(), "args": {k: getattr(args, k) for k in
                                                      ("quick", "sizes", "samples", "probes", "concurrent",
                                                       "cycle_seconds")},
                        "install": cp.stdout.strip().splitlines(), "results": {}}
        cfgs = configs(args, launcher)
        report["configurations"] = {c.name: c.label for c in cfgs}
        # bare interpreter start, through the same exec path, in a namespace of ours
        from netns_fixtures import Netns
        with Netns.create("nlpm-bench", "base") as ns:
            b = driver(ns, {"op": "baseline", "argv": [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"],
                            "samples": max(args.samples * 3, 20)})
            report["baseline"] = summary(b["wall"], b["rss_kib"])
        print(f"baseline python3 -I -S -c pass: p50 {report['baseline']['p50_ms']} ms", flush=True)
        for cfg in cfgs:
            per: dict = {}
            for s in args.sizes:
                t0 = time.perf_counter()
                try:
                    per[str(s)] = run_config(cfg, s, args, workdir,
                                             measure_latency=s in (0, max(args.sizes)), concurrency=s == 0)
                except Exception as e:  # noqa: BLE001 - report it, go on with the rest
                    per[str(s)] = {"backlog": s, "error": f"{type(e).__name__}: {e}"}
                r = per[str(s)]
                print(f"{cfg.name:20s} {s:6d}: " + (r["error"][:200] if "error" in r else
                      " ".join(f"{c} {(r.get(c) or {}).get('p50_ms')}" for c in OPS) + " ms")
                      + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            report["results"][cfg.name] = per
        report["seconds"] = time.perf_counter() - t_start
        report["targets"] = targets(report["results"], report["baseline"], args.sizes)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(report, f, indent=2)
        text = render(report)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text)
        files = plot(report, args.out)
        print(text)
        print("wrote " + ", ".join([os.path.join(args.out, "results.json"), os.path.join(args.out, "results.md")]
                                   + files))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
