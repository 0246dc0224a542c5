"""Pod-start latency benchmark: ``python3 -m benchmarks [--quick]`` (root; see benchmarks/README.md).

For every plugin configuration and backlog size it builds a fresh node namespace
(plus a client and a pod namespace, via netns_fixtures), fills the node with the
mappings of N existing containers (real kernel state, large batches), and from a
driver process *inside* the node namespace execs the plugin exactly as a runtime
does.  Measured: whole-process wall time of ADD, CHECK and DEL (p50, p90, peak
RSS), 50 concurrent ADDs (wall time, failures), and the latency of a new TCP
connection's first packet through a hostPort (client connect() -> SYN-ACK from
the pod, i.e. DNAT of a new flow) at 0 and the largest backlog.

Writes ``results.json``, ``results.md`` (the table) and PNG plots to ``--out``.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "netns-fixtures"))

UPSTREAM = "/usr/lib/cni/portmap"
PROBE_PORT = 8080
QUOTED_UPSTREAM_NFT_ADD_MS = 38.0  # issue 6, measured on these machines with upstream's nft backend


# ----------------------------------------------------------------- helpers
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(walls: list[float], rss: list[int] | None = None) -> dict:
    d = {"n": len(walls), "p50_ms": _ms(pct(walls, 0.5)), "p90_ms": _ms(pct(walls, 0.9)),
         "min_ms": _ms(min(walls) if walls else None)}
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
                 backend: str | None = None, daemon: bool = False, label: str = ""):
        self.name, self.exe, self.fill, self.env = name, exe, fill, dict(env or {})
        self.backend, self.daemon, self.label = backend, daemon, label or name


def driver(ns, job: dict, timeout: float = 900) -> dict:
    cp = ns.run(sys.executable, "-m", "benchmarks.driver", input=json.dumps(job), timeout=timeout,
                env={"PYTHONPATH": REPO + os.pathsep + os.path.join(REPO, "netns-fixtures")},
                check=False)
    if cp.returncode != 0:
        raise RuntimeError(f"driver {job['op']} failed: {cp.stderr[-3000:]}")
    return json.loads(cp.stdout)


def start_daemon(ns, sock: str, log: str):
    f = open(log, "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NLPORTMAP_"))}
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
        base_env = {**cfg.env, "CNI_NETNS": pod.path}
        daemon = None
        try:
            if cfg.daemon:
                sock = os.path.join(workdir, f"d-{t.suffix}.sock")
                daemon = start_daemon(t.host, sock, os.path.join(workdir, f"daemon-{cfg.name}-{backlog}.log"))
                base_env["NLPORTMAP_SOCKET"] = sock
            job = {"exe": cfg.exe, "env": base_env, "backend": cfg.backend}
            seed = driver(t.host, {**job, "op": "exec", "command": "ADD", "index": 8_000_000,
                                   "ip": "10.244.250.250", "port": 9999})
            if seed["rc"] != 0:
                raise RuntimeError(f"{cfg.name}: seed ADD failed: {seed.get('error')}")
            if backlog:
                res["fill"] = driver(t.host, {"op": "fill", "impl": cfg.fill, "n": backlog})
            cyc = driver(t.host, {**job, "op": "cycle", "samples": args.samples,
                                  "first": 1_000_000, "max_seconds": args.cycle_seconds,
                                  "baseline_argv": [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]})
            if cyc.get("BASE"):
                res["BASE"] = summary([w for w, _ in cyc["BASE"]], None)
            for command in ("ADD", "CHECK", "DEL"):
                rss = cyc["rss_kib"].get(command)
                res[command] = summary([w for w, _ in cyc[command]], [rss] if rss else None)
            res["failures"] = cyc["failures"][:5]
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


def targets(results: dict, baseline: dict, sizes: list[int]) -> list[dict]:
    d = results.get("nlportmap-daemon", {})
    big = str(max(sizes))
    empty = d.get("0", {})
    full = d.get(big, {})
    rows = []

    def row(name, value, limit, ok, note=""):
        rows.append({"target": name, "value": value, "limit": limit,
                     "met": None if ok is None else bool(ok), "note": note})

    add0 = (empty.get("ADD") or {}).get("p50_ms")
    for upname, up in results.items():
        if upname.startswith("upstream") or upname.startswith("extra"):
            u = (up.get("0", {}).get("ADD") or {}).get("p50_ms")
            r = ratio(add0, u)
            row(f"daemon ADD p50 / {upname} ADD p50 (empty node)", r, 0.5, r is not None and r <= 0.5)
    r = ratio(add0, QUOTED_UPSTREAM_NFT_ADD_MS)
    row("daemon ADD p50 / upstream nftables ADD (38 ms, quoted in the issue; not measurable here)", r, 0.5,
        r is not None and r <= 0.5, "Debian's portmap 1.1.1 has no nftables backend; pass --plugin NAME=PATH,nftables")
    bare = (empty.get("BASE") or {}).get("p50_ms") or baseline.get("p50_ms")
    r = ratio(add0, bare)
    row("daemon ADD p50 / python3 -I -S -c pass p50 (interleaved with the ADD samples)", r, 1.5,
        r is not None and r <= 1.5)
    for c in ("ADD", "CHECK", "DEL"):
        r = ratio((full.get(c) or {}).get("p50_ms"), (empty.get(c) or {}).get("p50_ms"))
        row(f"daemon {c} p50 at {big} / at 0 mappings", r, 1.2, r is not None and r <= 1.2)
    r = ratio((full.get("first_packet") or {}).get("p50_us"), (empty.get("first_packet") or {}).get("p50_us"))
    row(f"first-packet p50 at {big} / at 0 mappings (nlportmap)", r, 1.1, r is not None and r <= 1.1)
    rss = max([(d.get(s, {}).get(c) or {}).get("peak_rss_mib") or 0 for s in d for c in ("ADD", "CHECK", "DEL")]
              or [0])
    row("peak RSS of the exec'd shim (daemon mode), MiB", rss, 15, 0 < rss < 15)
    conc = (empty.get("concurrent") or {}).get("ADD") or {}
    row(f"{conc.get('n', '?')} concurrent ADDs: failures (daemon)", conc.get("failures"), 0,
        conc.get("failures") == 0 if conc else None)
    return rows


def render(report: dict) -> str:
    res, sizes = report["results"], report["args"]["sizes"]
    lines = ["# nlportmap pod-start benchmark", "",
             "Machine: " + ", ".join(f"{k}: {v}" for k, v in report["machine"].items()), "",
             f"Mode: {'quick' if report['args']['quick'] else 'full'}; {report['args']['samples']} samples per op; "
             f"{report['args']['probes']} first-packet probes; total {report['seconds']:.0f} s", "",
             f"Baseline `python3 -I -S -c pass` (same exec path): p50 {report['baseline']['p50_ms']} ms, "
             f"p90 {report['baseline']['p90_ms']} ms, peak RSS {report['baseline'].get('peak_rss_mib')} MiB", "",
             "## Whole-process wall time per invocation (ms) and peak RSS (MiB)", "",
             "| plugin | existing containers | ADD p50 | ADD p90 | CHECK p50 | CHECK p90 | DEL p50 | DEL p90 | peak RSS | failures |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, per in res.items():
        for s in sizes:
            r = per.get(str(s))
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {name} | {s} | error: {r['error'][:80]} |||||||||")
                continue
            g = lambda c, k: (r.get(c) or {}).get(k)  # noqa: E731
            rss = max([g(c, "peak_rss_mib") or 0 for c in ("ADD", "CHECK", "DEL")])
            lines.append(f"| {name} | {s} | {g('ADD', 'p50_ms')} | {g('ADD', 'p90_ms')} | {g('CHECK', 'p50_ms')} | "
                         f"{g('CHECK', 'p90_ms')} | {g('DEL', 'p50_ms')} | {g('DEL', 'p90_ms')} | {rss} | "
                         f"{r.get('failure_count', 0)} |")
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
    lines += ["", "## Targets (issue 6) — reported, never asserted", "",
              "| target | value | limit | met |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['value']} | {t['limit']} | {met} |")
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    for ax, c in zip(axes, ("ADD", "CHECK", "DEL")):
        for name, per in res.items():
            xs = [s for s in sizes if (per.get(str(s)) or {}).get(c)]
            if not xs:
                continue
            p50 = [per[str(s)][c]["p50_ms"] for s in xs]
            p90 = [per[str(s)][c]["p90_ms"] for s in xs]
            line, = ax.plot(xs, p50, marker="o", label=name)
            ax.fill_between(xs, p50, p90, alpha=0.15, color=line.get_color())
        ax.axhline(report["baseline"]["p50_ms"], color="grey", ls=":", lw=1, label="python3 -I -S -c pass")
        ax.set_title(f"{c}: whole-process wall time (p50, band to p90)")
        ax.set_xlabel("existing containers' mappings on the node")
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize=8)
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
    p.add_argument("--quick", action="store_true", help="fewer samples (about 5 minutes on 2 cores)")
    p.add_argument("--sizes", default="0,1000,10000", help="existing containers per node (comma list)")
    p.add_argument("--samples", type=int, default=None, help="ADD/CHECK/DEL cycles per point (default 25, quick 8)")
    p.add_argument("--probes", type=int, default=None, help="first-packet connections (default 300, quick 100)")
    p.add_argument("--concurrent", type=int, default=50, help="concurrent ADDs on the empty node")
    p.add_argument("--cycle-seconds", type=float, default=None,
                   help="cap on one point's ADD/CHECK/DEL loop (default 150, quick 60)")
    p.add_argument("--plugin", action="append", default=[], metavar="NAME=PATH[,nftables|iptables]",
                   help="another portmap executable to measure (e.g. a newer upstream build with "
                        "its nftables backend: upstream-nft=/opt/cni/bin/portmap,nftables)")
    p.add_argument("--only", default="", help="comma list of configuration names to run")
    p.add_argument("--no-upstream", action="store_true", help=f"skip {UPSTREAM}")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    a = p.parse_args(argv)
    a.sizes = sorted({int(x) for x in a.sizes.split(",") if x.strip()})
    if 0 not in a.sizes:
        a.sizes.insert(0, 0)
    a.samples = a.samples or (8 if a.quick else 25)
    a.probes = a.probes or (100 if a.quick else 300)
    a.cycle_seconds = a.cycle_seconds or (60 if a.quick else 150)
    return a


def configs(args, launcher: str) -> list[Config]:
    out = [Config("nlportmap-daemon", launcher, "nlportmap", daemon=True),
           Config("nlportmap-inproc", launcher, "nlportmap", env={"NLPORTMAP_SOCKET": "none"})]
    if not args.no_upstream and os.access(UPSTREAM, os.X_OK):
        out.append(Config("upstream-iptables", UPSTREAM, "iptables"))
    for spec in args.plugin:
        name, _, rest = spec.partition("=")
        path, _, backend = rest.partition(",")
        backend = backend or "iptables"
        out.append(Config(f"extra-{name}", path, "nftables" if backend == "nftables" else "iptables",
                          backend=backend))
    if args.only:
        keep = set(args.only.split(","))
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
    try:
        launcher = os.path.join(workdir, "portmap")
        subprocess.run([sys.executable, "-m", "nlportmap.launcher", launcher], check=True, capture_output=True)
        report: dict = {"machine": machine(), "args": {k: getattr(args, k) for k in
                                                      ("quick", "sizes", "samples", "probes", "concurrent",
                                                       "cycle_seconds")},
                        "results": {}}
        cfgs = configs(args, launcher)
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
                      "ADD {} CHECK {} DEL {} ms".format(*((r.get(c) or {}).get("p50_ms") for c in ("ADD", "CHECK", "DEL"))))
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
