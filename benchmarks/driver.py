"""The in-namespace half of the benchmark: ``ip netns exec NODE python3 -m benchmarks.driver``.

Runs inside the node namespace, like a runtime does: it ``posix_spawn``s the plugin
executable directly (env + JSON on stdin, as libcni), measures the whole process's
wall time from spawn to reap, and reads its peak RSS from ``wait4``.  It also fills
the node with existing containers' mappings (real kernel state, in large batches).

Reads one JSON job on stdin, writes one JSON result on stdout.  Jobs:

``{"op": "fill", "impl": "nlportmap"|"iptables"|"nftables", "n": N}``
``{"op": "cycle", "exe": P, "env": {...}, "samples": K, "first": i, "backend": b, "ops": [...]}``
    K times, each a separate exec: VERSION (as a runtime's first call), ADD, CHECK, DEL of a
    new container, then containerd's second DEL (``DEL-nostate``: ``CNI_NETNS`` empty, no
    ``prevResult``, same ``runtimeConfig``) -> per-op wall times and exit statuses; one
    more cycle under /usr/bin/time for each op's peak RSS.
``{"op": "exec", "exe": P, "env": {...}, "command": C, "index": i, "ip": A, "port": p}``
``{"op": "concurrent", "exe": P, "env": {...}, "n": N, "first": i}``
    N ADDs started at once (threads), then their DELs at once.
``{"op": "baseline", "argv": [...], "samples": K}``  (e.g. python3 -I -S -c pass)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

NETWORK = "bench"


def cid(i: int) -> str:
    """A runtime-like 64-hex container ID."""
    return hashlib.sha256(f"nlpm-bench-{i}".encode()).hexdigest()


def fill_ip(i: int) -> str:
    return f"10.{200 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def sample_ip(i: int) -> str:
    return f"10.244.{1 + (i // 250) % 250}.{i % 250 + 1}"


OPS = ("VERSION", "ADD", "CHECK", "DEL", "DEL-nostate")
VERSION_STDIN = b'{"cniVersion":"1.0.0"}'


def conf(index: int, ip: str, port: int, backend: str | None = None, prev: bool = True) -> bytes:
    """The portmap entry of a bridge+host-local+portmap conflist as libcni hands it over.
    ``prev=False``: containerd's second DEL (RemovePodSandbox) -- the cached result is gone,
    so no ``prevResult``; everything else, ``runtimeConfig`` included, is the same."""
    c = {
        "capabilities": {"portMappings": True},
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"mac": "0a:58:0a:f4:00:01", "name": "cni0"},
                           {"mac": "0a:58:0a:f4:00:02", "name": "veth%08x" % index},
                           {"mac": "0a:58:0a:f4:00:03", "name": "eth0", "sandbox": "/var/run/netns/pod"}],
            "ips": [{"address": f"{ip}/16", "gateway": "10.244.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
        "runtimeConfig": {"portMappings": [{"containerPort": 80, "hostPort": port, "protocol": "tcp"}]},
        "snat": True,
        "type": "portmap",
    }
    if backend:
        c["backend"] = backend
    if not prev:
        del c["prevResult"]
    return json.dumps(c, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------- exec
def spawn(exe: str, env: dict, stdin: bytes, argv: list[str] | None = None) -> dict:
    """One process, runtime-style: returns wall seconds, exit status, maxrss KiB, stdout, stderr."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, argv or [exe], env, file_actions=[
        (os.POSIX_SPAWN_DUP2, r_in, 0), (os.POSIX_SPAWN_DUP2, w_out, 1),
        (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        (os.POSIX_SPAWN_CLOSE, w_in), (os.POSIX_SPAWN_CLOSE, r_out)])
    os.close(r_in)
    os.close(w_out)
    try:
        os.write(w_in, stdin)
    except BrokenPipeError:
        pass
    os.close(w_in)
    chunks = []
    while True:
        b = os.read(r_out, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r_out)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    err.seek(0)
    return {"wall": wall, "rc": os.waitstatus_to_exitcode(status), "rss_kib": ru.ru_maxrss,
            "stdout": b"".join(chunks).decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def plugin_env(base: dict, command: str, index: int) -> dict:
    if command == "VERSION":  # as Podman sends it (runtimes.md): literal "dummy"s, no container ID
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **base,
                "CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "", "CNI_NETNS": "dummy",
                "CNI_IFNAME": "dummy", "CNI_PATH": "dummy"}
    if command == "DEL-nostate":  # containerd's RemovePodSandbox DEL: same ID, CNI_NETNS empty
        return {**plugin_env(base, "DEL", index), "CNI_NETNS": ""}
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **base,
           "CNI_COMMAND": command, "CNI_CONTAINERID": cid(index), "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME=bench-{index}", "CNI_PATH": "/usr/lib/cni"}
    env.setdefault("CNI_NETNS", "/var/run/netns/pod")
    return env


TIME = "/usr/bin/time"


def run_op(job: dict, command: str, index: int, ip: str, port: int, rss: bool = False) -> dict:
    """One plugin invocation.  ``rss``: run it under /usr/bin/time (a 2 MiB C parent) for its
    peak RSS: wait4() after a spawn from this (Python, ~18 MiB) process would report the
    parent's high-water mark, which exec() carries over into the child's ru_maxrss."""
    env = plugin_env(job.get("env", {}), command, index)
    stdin = VERSION_STDIN if command == "VERSION" else \
        conf(index, ip, port, job.get("backend"), prev=command != "DEL-nostate")
    if rss:
        if not os.access(TIME, os.X_OK):
            return {"rc": 0, "rss_kib": None}
        with tempfile.NamedTemporaryFile("r") as f:
            r = spawn(TIME, env, stdin, [TIME, "-f", "%M", "-o", f.name, job["exe"]])
            try:
                r["rss_kib"] = int(f.read().strip().splitlines()[-1])
            except (ValueError, IndexError):
                r["rss_kib"] = None
    else:
        r = spawn(job["exe"], env, stdin)
        r["rss_kib"] = None
    r["command"] = command
    if r["rc"] != 0:
        r["error"] = (r["stdout"] + r["stderr"])[-2000:]
    del r["stdout"], r["stderr"]
    return r


def job_cycle(job: dict) -> dict:
    """Per op a list of [wall seconds, exit status]; failures = every non-zero exit."""
    ops = job.get("ops") or OPS
    out: dict = {**{c: [] for c in ops}, "BASE": [], "failures": [], "rss_kib": {}}
    first = job.get("first", 1_000_000)
    base = job.get("baseline_argv")  # a bare interpreter start right before each ADD (same load)
    deadline = time.monotonic() + job.get("max_seconds", 300)
    for k in range(job["samples"]):
        if k >= job.get("min_samples", 3) and time.monotonic() > deadline:
            out["truncated"] = k
            break
        i = first + k
        ip, port = sample_ip(i), 30000 + (i % 30000)
        for command in ops:
            if base and command == "ADD":
                out["BASE"].append([spawn(base[0], {"PATH": "/usr/bin:/bin"}, b"", base)["wall"], 0])
            r = run_op(job, command, i, ip, port)
            out[command].append([r["wall"], r["rc"]])
            if r["rc"] != 0:
                out["failures"].append({"command": command, "index": i, "rc": r["rc"],
                                        "error": r.get("error", "")})
    i = first + job["samples"]  # one more cycle, under /usr/bin/time, for peak RSS
    for command in ops:
        out["rss_kib"][command] = run_op(job, command, i, sample_ip(i), 30000 + (i % 30000), rss=True)["rss_kib"]
    return out


def job_exec(job: dict) -> dict:
    return run_op(job, job["command"], job["index"], job["ip"], job["port"])


def job_concurrent(job: dict) -> dict:
    n, first = job["n"], job.get("first", 2_000_000)
    out: dict = {}
    for command in ("ADD", "DEL"):
        results: list = [None] * n
        barrier = threading.Barrier(n)

        def one(k: int, command: str = command) -> None:
            i = first + k
            barrier.wait()
            results[k] = run_op(job, command, i, sample_ip(i), 40000 + k)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        out[command] = {"wall": time.perf_counter() - t0,
                        "per_process": [r["wall"] for r in results if r],
                        "failures": [r.get("error", "?") for r in results if r and r["rc"] != 0]}
    return out


def job_baseline(job: dict) -> dict:
    walls = []
    for _ in range(job["samples"]):
        walls.append(spawn(job["argv"][0], {"PATH": "/usr/bin:/bin"}, b"", job["argv"])["wall"])
    rss = None
    if os.access(TIME, os.X_OK):
        with tempfile.NamedTemporaryFile("r") as f:
            spawn(TIME, {"PATH": "/usr/bin:/bin"}, b"", [TIME, "-f", "%M", "-o", f.name] + job["argv"])
            rss = int(f.read().strip().splitlines()[-1])
    return {"wall": walls, "rss_kib": [rss] if rss else []}


# ---------------------------------------------------------------------- fill
def fill_nlportmap(n: int) -> dict:
    """n containers' elements through nlportmap's own plan and layout code, in large batches."""
    from nlportmap.config import parse_config
    from nlportmap.nft.backend import NftBackend
    from nlportmap.plan import Owner, make_plan
    from nlportmap.result import container_ips, decode_prev_result

    b = NftBackend()
    adds: dict = {}
    stamp = int(time.time() * 1000)
    for i in range(n):
        c = parse_config(conf(i, fill_ip(i), 10000 + i), "ADD")
        prev = decode_prev_result(c.prevResult, c.cniVersion)
        plan = make_plan(c, container_ips(prev, "eth0"), Owner(cid(i), "eth0", c.name))
        comment = plan.owner.stamped(stamp) if hasattr(plan.owner, "stamped") else plan.owner.comment
        for fam, s, k, d, _label in b._wanted(plan):
            adds.setdefault((fam, s), []).append((k, d, comment))
    ops = b._elem_ops({}, adds)
    for j in range(0, len(ops), 50):
        b.sock.commit(ops[j:j + 50])
    b.close()
    return {"ops": len(ops), "elements": sum(len(v) for v in adds.values())}


def fill_iptables(n: int) -> dict:
    """Upstream's iptables layout (portmap-behaviour.md §3.3-3.6) for n containers, one restore."""
    lines = ["*nat"]
    rules = []
    for i in range(n):
        c, ip, port = cid(i), fill_ip(i), 10000 + i
        ch = "CNI-DN-" + hashlib.sha512((NETWORK + c).encode()).hexdigest()[:21]
        lines.append(f":{ch} - [0:0]")
        rules += [f"-A {ch} -s {ip}/16 -p tcp -m tcp --dport {port} -j CNI-HOSTPORT-SETMARK",
                  f"-A {ch} -s 127.0.0.1/32 -p tcp -m tcp --dport {port} -j CNI-HOSTPORT-SETMARK",
                  f"-A {ch} -p tcp -m tcp --dport {port} -j DNAT --to-destination {ip}:80",
                  f'-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"{NETWORK}\\" id: \\"{c}\\"" '
                  f"-m multiport --dports {port} -j {ch}"]
    text = "\n".join(lines + rules + ["COMMIT", ""])
    subprocess.run(["iptables-restore", "--noflush", "-w"], input=text.encode(), check=True)
    return {"rules": len(rules), "chains": n}


def fill_nftables(n: int) -> dict:
    """Upstream's nftables layout (portmap-behaviour.md §4.3/4.4): one rule per mapping, comment = ID."""
    out = ["add table ip cni_hostport { comment \"CNI portmap plugin\" ; }",
           "add chain ip cni_hostport hostports",
           "add chain ip cni_hostport masquerading { type nat hook postrouting priority 100 ; }"]
    for i in range(n):
        c, ip, port = cid(i), fill_ip(i), 10000 + i
        out.append(f'add rule ip cni_hostport hostports tcp dport {port} dnat to {ip}:80 comment "{c}"')
        out.append(f'add rule ip cni_hostport masquerading ip saddr {ip} ip daddr {ip} masquerade comment "{c}"')
        out.append(f'add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr {ip} masquerade comment "{c}"')
    subprocess.run(["nft", "-f", "-"], input="\n".join(out).encode(), check=True)
    return {"rules": 3 * n}


def job_fill(job: dict) -> dict:
    t0 = time.perf_counter()
    r = {"nlportmap": fill_nlportmap, "iptables": fill_iptables, "nftables": fill_nftables}[job["impl"]](job["n"])
    r["seconds"] = time.perf_counter() - t0
    return r


def main() -> int:
    job = json.load(sys.stdin)
    fn = {"fill": job_fill, "cycle": job_cycle, "exec": job_exec, "concurrent": job_concurrent,
          "baseline": job_baseline}[job["op"]]
    json.dump(fn(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
