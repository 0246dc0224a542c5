"""Resident mode: the exec'd shim and ``nlportmap daemon`` (root, throw-away namespaces).

Every plugin here is exec'd the way a runtime does it (env + JSON on stdin) through
the generated ``-I -S`` launcher, inside a namespace of ours; the daemon runs inside
a namespace of ours with its socket in a private temp dir.  Which path served a
request is read from the shim's line in ``NLPORTMAP_TIMINGS_FILE``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netns_fixtures import Netns, cleanup_stale, kill_process

pytestmark = pytest.mark.root

HEAVY = ("pyroute2", "msgspec", "anyio")


def _conf(port: int = 8080, ip: str = "10.244.0.2", proto: str = "tcp") -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "dnet", "type": "portmap", "snat": True,
        "capabilities": {"portMappings": True},
        "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": proto}]},
        "prevResult": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
                       "ips": [{"address": f"{ip}/24", "gateway": "10.244.0.1", "interface": 0}]},
    }).encode()


class Env:
    """Two node namespaces (``a`` with a daemon, ``b`` without), a pod netns, a temp dir."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="nlpm-daemon-test-")
        os.chmod(self.dir, 0o755)
        self.a = Netns.create("nlpm", "dmna")
        self.b = Netns.create("nlpm", "dmnb")
        self.pod = Netns.create("nlpm", "dmnpod")
        self.sock = os.path.join(self.dir, "d.sock")
        self.lockdir = os.path.join(self.dir, "lock")
        self.timings = os.path.join(self.dir, "timings.jsonl")
        self.launcher = os.path.join(self.dir, "portmap")
        subprocess.run([sys.executable, "-m", "nlportmap.launcher", self.launcher], check=True,
                       capture_output=True)
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = os.path.join(self.dir, "daemon.log")

    def base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NLPORTMAP_"))}
        env.update(NLPORTMAP_SOCKET=self.sock, NLPORTMAP_LOCK_DIR=self.lockdir,
                   NLPORTMAP_STATE_DIR=os.path.join(self.dir, "state"))
        return env

    def start_daemon(self, *extra: str, env: dict | None = None, python: tuple = ("-m", "nlportmap"),
                     socket_args: tuple | None = None, pass_fds: tuple = ()) -> subprocess.Popen:
        """``python``: what follows the interpreter (a ``-c`` wrapper may replace ``-m nlportmap``)."""
        full = {**self.base_env(), **(env or {})}
        sock = ("--socket", self.sock) if socket_args is None else socket_args
        with open(self.daemon_log, "w") as log:
            self.daemon = subprocess.Popen(
                ["ip", "netns", "exec", self.a.name, sys.executable, *python, "daemon",
                 *sock, "--verbose", *extra],
                env=full, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds)
        self.wait_log("listening on", 20)
        return self.daemon

    def wait_log(self, what: str, timeout: float, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self.daemon_log).read_text()
            if text.count(what) >= count:
                return text
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{text}")
            time.sleep(0.02)
        raise AssertionError(f"daemon log never said {what!r} x{count}:\n{Path(self.daemon_log).read_text()}")

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
                try:
                    self.daemon.wait(15)
                except subprocess.TimeoutExpired:
                    kill_process(self.daemon)
            self.daemon = None

    def plugin_argv(self, ns: Netns) -> list[str]:
        return ["ip", "netns", "exec", ns.name, self.launcher]

    def plugin_env(self, command: str, cid: str, **extra: str) -> dict:
        return {**self.base_env(), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
                "CNI_NETNS": self.pod.path, "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1",
                "CNI_PATH": "/usr/lib/cni", "NLPORTMAP_TIMINGS_FILE": self.timings, **extra}

    def plugin(self, ns: Netns, command: str, cid: str, conf: bytes | None = None,
               **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.plugin_argv(ns), input=conf if conf is not None else _conf(),
                              env=self.plugin_env(command, cid, **extra), capture_output=True,
                              timeout=120)

    def shim_lines(self) -> list[dict]:
        if not os.path.exists(self.timings):
            return []
        rows = [json.loads(x) for x in Path(self.timings).read_text().splitlines() if x.strip()]
        return [r for r in rows if "nlportmap_shim" in r]

    def ruleset(self, ns: Netns) -> str:
        out = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "list", "table", "ip", "nlportmap"],
                             capture_output=True, text=True).stdout
        return re.sub(r" @\d+", "", out)  # creation stamps differ between runs

    def elements(self, ns: Netns) -> list[str]:
        rows = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "nlportmap", "list",
                               "--json", "--backend", "nftables"], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "CNI_COMMAND"}).stdout
        return sorted(f"{r['containerID']} {r['protocol']} {r['hostPort']}" for r in json.loads(rows or "[]"))

    def close(self) -> None:
        try:
            self.stop_daemon()
        finally:
            for ns in (self.a, self.b, self.pod):
                ns.delete()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def env():
    cleanup_stale("nlpm")
    e = Env()
    try:
        yield e
    finally:
        e.close()


def _ok(cp: subprocess.CompletedProcess) -> None:
    assert cp.returncode == 0, f"rc={cp.returncode}\nstdout={cp.stdout!r}\nstderr={cp.stderr!r}"


def test_daemon_gives_the_same_kernel_state_as_in_process(env):
    env.start_daemon()
    cid = "c0ffee01"
    add = env.plugin(env.a, "ADD", cid)
    _ok(add)
    assert [r["via"] for r in env.shim_lines()] == ["daemon"], env.shim_lines()
    after_add_daemon = env.ruleset(env.a)
    assert "tcp . 8080" in after_add_daemon
    check = env.plugin(env.a, "CHECK", cid)
    _ok(check)
    _ok(env.plugin(env.a, "DEL", cid))
    after_del_daemon = env.ruleset(env.a)
    assert [r["via"] for r in env.shim_lines()] == ["daemon"] * 3

    # the same three calls in-process, in namespace b (no daemon there: refused, see below,
    # so disable the daemon path outright)
    add_b = env.plugin(env.b, "ADD", cid, NLPORTMAP_SOCKET="none")
    _ok(add_b)
    assert add_b.stdout == add.stdout  # the echoed result, byte for byte
    assert env.ruleset(env.b) == after_add_daemon
    _ok(env.plugin(env.b, "CHECK", cid, NLPORTMAP_SOCKET="none"))
    _ok(env.plugin(env.b, "DEL", cid, NLPORTMAP_SOCKET="none"))
    assert env.ruleset(env.b) == after_del_daemon
    assert [r["via"] for r in env.shim_lines()][3:] == ["in-process"] * 3


def test_errors_come_back_unchanged_through_the_daemon(env):
    env.start_daemon()
    bad = b'{"cniVersion":"1.0.0","name":"dnet","type":"portmap","prevResult":{}'  # truncated JSON
    via_daemon = env.plugin(env.a, "ADD", "c0ffee02", bad)
    in_proc = env.plugin(env.a, "ADD", "c0ffee02", bad, NLPORTMAP_SOCKET="none")
    assert via_daemon.returncode == in_proc.returncode == 1
    assert via_daemon.stdout == in_proc.stdout and json.loads(via_daemon.stdout)["code"] == 6
    assert [r["via"] for r in env.shim_lines()] == ["daemon", "in-process"]
    version = subprocess.run(env.plugin_argv(env.a), input=b'{"cniVersion":"1.0.0"}',
                             env=env.plugin_env("VERSION", ""), capture_output=True)
    _ok(version)
    assert json.loads(version.stdout)["cniVersion"] == "1.1.0"


def test_daemon_killed_mid_request_shim_falls_back(env):
    daemon = env.start_daemon(env={"NLPORTMAP_DAEMON_TEST_DELAY": "30"})
    cid = "c0ffee03"
    conf = os.path.join(env.dir, "conf.json")
    with open(conf, "wb") as f:
        f.write(_conf(9090))
    with open(conf, "rb") as stdin:
        shim = subprocess.Popen(env.plugin_argv(env.a), stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env.plugin_env("ADD", cid))
    env.wait_log("accepted ADD", 20)
    os.kill(daemon.pid, signal.SIGKILL)  # by PID: the daemon process we started
    daemon.wait(10)
    out, err = shim.communicate(timeout=60)
    assert shim.returncode == 0, err
    assert json.loads(out)["ips"][0]["address"] == "10.244.0.2/24"
    lines = env.shim_lines()
    assert lines[-1]["via"] == "in-process" and "died mid-request" in lines[-1]["reason"], lines
    assert env.elements(env.a) == [f"{cid} tcp 9090"]


def test_late_daemon_work_never_overrides_the_fallback(env):
    """Shim gives up (result timeout) and does ADD itself; the runtime then DELs; the
    daemon's delayed copy of the ADD must not resurrect the mapping."""
    env.start_daemon(env={"NLPORTMAP_DAEMON_TEST_DELAY": "2"})
    cid = "c0ffee04"
    add = env.plugin(env.a, "ADD", cid, _conf(7070), NLPORTMAP_DAEMON_TIMEOUT="0.3")
    _ok(add)
    assert env.shim_lines()[-1]["via"] == "in-process"
    assert "did not answer" in env.shim_lines()[-1]["reason"]
    _ok(env.plugin(env.a, "DEL", cid, _conf(7070), NLPORTMAP_SOCKET="none"))
    env.wait_log("done ADD", 20)  # the daemon finished (refused to commit) its late copy
    assert env.elements(env.a) == []
    assert "status 1" in Path(env.daemon_log).read_text().split("done ADD", 1)[1].splitlines()[0]


def test_daemon_in_another_netns_is_refused(env):
    env.start_daemon()  # lives in namespace a
    cid = "c0ffee05"
    cp = env.plugin(env.b, "ADD", cid, _conf(6060), NLPORTMAP_DEBUG="1")
    _ok(cp)
    line = env.shim_lines()[-1]
    assert line["via"] == "in-process" and "another network namespace" in line["reason"], line
    assert b"another network namespace" in cp.stderr
    assert env.elements(env.b) == [f"{cid} tcp 6060"]  # landed in the caller's namespace
    assert env.elements(env.a) == []                   # and not in the daemon's
    env.wait_log("refused: peer is in another network namespace", 5)


def test_non_root_peer_is_refused(env):
    py = "/usr/bin/python3"
    if not os.access(py, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip("needs /usr/bin/python3 and setpriv to run a client as nobody")
    env.start_daemon("--mode", "0666")
    # the stdlib-only shim, copied where "nobody" can read it (the checkout may be private)
    import tempfile
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    repo = tempfile.mkdtemp(prefix="nlpm-pub-")
    try:
        _refused_as_nobody(env, py, src, repo)
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def _refused_as_nobody(env, py, src, repo):
    os.makedirs(os.path.join(repo, "nlportmap"))
    for f in ("__init__.py", "shim.py", "proto.py"):
        shutil.copy(os.path.join(src, "nlportmap", f), os.path.join(repo, "nlportmap", f))
    for d in (repo, os.path.join(repo, "nlportmap")):
        os.chmod(d, 0o755)
    code = (f"import sys; sys.path.insert(0, {repo!r})\n"
            "from nlportmap import shim\n"
            "try:\n"
            f"    shim.exchange({env.sock!r}, shim.encode_request({{b'CNI_COMMAND': b'VERSION',\n"
            f"                  b'NLPORTMAP_LOCK_DIR': {env.lockdir.encode()!r},\n"
            f"                  b'NLPORTMAP_STATE_DIR': {os.path.join(env.dir, 'state').encode()!r}}}, b''))\n"
            "    print('SERVED')\n"
            "except shim.Fallback as e:\n"
            "    print('FALLBACK', e)\n")
    cp = subprocess.run(["ip", "netns", "exec", env.a.name, "setpriv", "--reuid=65534", "--regid=65534",
                         "--clear-groups", py, "-I", "-S", "-c", code], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("FALLBACK daemon refused: peer uid 65534 is not root"), cp.stdout + cp.stderr
    # the same client as root is served (so the refusal above is about the uid)
    cp = subprocess.run(["ip", "netns", "exec", env.a.name, py, "-I", "-S", "-c", code],
                        capture_output=True, text=True, timeout=30)
    assert cp.stdout.startswith("SERVED"), cp.stdout + cp.stderr


def test_request_settings_travel_and_other_settings_must_match(env):
    """Issue 13: the lock/record directories and the upstream clean-up switch travel with
    the request, so the daemon serves a caller whose values differ from its own (and
    uses the caller's lock directory); a setting that does not travel still must match."""
    env.start_daemon()
    other = tempfile.mkdtemp(prefix="nlpm-locks-")
    os.chmod(other, 0o700)
    try:
        cp = env.plugin(env.a, "ADD", "c0ffee06", _conf(5050), NLPORTMAP_UPSTREAM_CLEANUP="0",
                        NLPORTMAP_LOCK_DIR=other)
        _ok(cp)
        line = env.shim_lines()[-1]
        assert line["via"] == "daemon", line
        assert [f for f in os.listdir(other) if f.startswith("netns-")], "the request's lock dir was not used"
    finally:
        shutil.rmtree(other, ignore_errors=True)
    cp = env.plugin(env.a, "ADD", "c0ffee07", _conf(5051), NLPORTMAP_CT_FALLBACK="1")
    _ok(cp)
    line = env.shim_lines()[-1]
    assert line["via"] == "in-process" and "NLPORTMAP_CT_FALLBACK" in line["reason"], line


def test_concurrent_requests_through_the_daemon(env):
    env.start_daemon()
    n = 20

    def add(i: int) -> subprocess.CompletedProcess:
        return env.plugin(env.a, "ADD", f"c0ffee{i:04d}", _conf(20000 + i, f"10.244.0.{10 + i}"))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(add, range(n)))
    for cp in results:
        _ok(cp)
    assert [r["via"] for r in env.shim_lines()] == ["daemon"] * n
    assert env.elements(env.a) == sorted(f"c0ffee{i:04d} tcp {20000 + i}" for i in range(n))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: env.plugin(env.a, "DEL", f"c0ffee{i:04d}",
                                                     _conf(20000 + i, f"10.244.0.{10 + i}")), range(n)))
    for cp in results:
        _ok(cp)
    assert env.elements(env.a) == []


def _imported(stderr: bytes) -> set[str]:
    mods = set()
    for line in stderr.decode(errors="replace").splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if m:
            mods.add(m.group(1))
    return mods | {m.split(".")[0] for m in mods}  # full names and their top-level packages


def test_shim_imports_nothing_heavy_on_the_daemon_path(env):
    env.start_daemon()
    cp = env.plugin(env.a, "ADD", "c0ffee07", _conf(4040), NLPORTMAP_DEBUG="imports")
    _ok(cp)
    assert env.shim_lines()[-1]["via"] == "daemon"
    mods = _imported(cp.stderr)
    assert "nlportmap" in mods  # the report is there at all
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    assert not mods & {"os", "socket", "json", "re"}, sorted(mods & {"os", "socket", "json", "re"})
    # control: the in-process path imports the request machinery, so the check above can fail
    # (and, since the cold path went lean, still none of the heavy libraries: issue 10)
    cp = env.plugin(env.a, "DEL", "c0ffee07", _conf(4040), NLPORTMAP_DEBUG="imports", NLPORTMAP_SOCKET="none")
    _ok(cp)
    got = _imported(cp.stderr)
    assert {"nlportmap.skel", "nlportmap.plugin", "nlportmap.nft.backend"} <= got
    assert not got & set(HEAVY), sorted(got & set(HEAVY))


# ------------------------------------------------------------ socket activation
#: exec wrapper: the inherited socket to fd 3, LISTEN_PID = the daemon's own pid (execv keeps it)
_ACTIVATE = ("import os, sys\n"
             "fd = int(sys.argv[1])\n"
             "os.dup2(fd, 3)\n"
             "os.close(fd)\n"
             "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='nlpm')\n"
             "os.execv(sys.executable, [sys.executable, '-m', 'nlportmap'] + sys.argv[2:])\n")


def test_socket_activation_serves_the_inherited_socket_and_exits_when_idle(env):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(env.sock)  # what systemd's socket unit does (SocketMode=0600)
    os.chmod(env.sock, 0o600)
    listener.listen(16)
    try:
        fd = listener.fileno()
        daemon = env.start_daemon("--idle-exit", "1.5", python=("-c", _ACTIVATE, str(fd)),
                                  socket_args=(), pass_fds=(fd,))
        log = env.wait_log("listening on", 5)
        assert "socket-activated" in log and env.sock in log, log
        cid = "c0ffee0a"
        add = env.plugin(env.a, "ADD", cid, _conf(3030))
        _ok(add)
        assert json.loads(add.stdout)["ips"][0]["address"] == "10.244.0.2/24"
        assert [r["via"] for r in env.shim_lines()] == ["daemon"], env.shim_lines()
        assert env.elements(env.a) == [f"{cid} tcp 3030"]
        t = time.monotonic()
        assert daemon.wait(10) == 0  # idle exit, status 0 (systemd starts it again on demand)
        assert time.monotonic() - t < 5
        assert "idle for 1.5s" in Path(env.daemon_log).read_text()
        assert os.path.exists(env.sock)  # the socket file belongs to whoever passed it
        # the variables were consumed: the environment the daemon ran requests in had none
        env.daemon = None
    finally:
        listener.close()


def test_socket_activation_rejects_a_socket_it_cannot_serve(env):
    udp = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp.bind(env.sock)
    try:
        fd = udp.fileno()
        cp = subprocess.run(["ip", "netns", "exec", env.a.name, sys.executable, "-c", _ACTIVATE, str(fd),
                             "daemon"], env=env.base_env(), pass_fds=(fd,), capture_output=True,
                            text=True, timeout=20)
        assert cp.returncode == 1, cp
        assert cp.stderr.count("\n") == 1 and "not a listening Unix stream socket" in cp.stderr, cp.stderr
    finally:
        udp.close()


# ------------------------------------------------------------ a daemon that cannot serve
def _failing_daemon(env, sock_path: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    cp = subprocess.run(["ip", "netns", "exec", env.a.name, sys.executable, "-m", "nlportmap", "daemon",
                         "--socket", sock_path], env=env.base_env(), capture_output=True, text=True,
                        timeout=30)
    return cp, time.monotonic() - t


def _one_line_error(cp, what: str) -> None:
    assert cp.returncode == 1, cp
    assert cp.stdout == "" and cp.stderr.count("\n") == 1, cp.stderr
    assert what in cp.stderr and "Traceback" not in cp.stderr, cp.stderr


def test_second_daemon_on_a_busy_socket_exits_at_once(env):
    env.start_daemon()
    cp, took = _failing_daemon(env, env.sock)
    _one_line_error(cp, f"another daemon is listening on {env.sock}")
    assert took < 1.0, took
    assert env.daemon.poll() is None  # the first one is untouched and still serves
    _ok(env.plugin(env.a, "ADD", "c0ffee0b", _conf(3131)))
    assert env.shim_lines()[-1]["via"] == "daemon"


def test_daemon_whose_socket_directory_cannot_be_created_exits_at_once(env):
    blocker = os.path.join(env.dir, "a-file")
    open(blocker, "w").close()
    cp, took = _failing_daemon(env, os.path.join(blocker, "sub", "d.sock"))
    _one_line_error(cp, f"cannot create the socket directory {blocker}/sub")
    assert took < 1.0, took


def test_daemon_failing_after_warm_up_does_not_hang(env):
    """bind() fails after the warm-up started anyio's event loop thread: the process still exits."""
    cp, took = _failing_daemon(env, os.path.join(env.dir, "s" * 120 + ".sock"))  # > sun_path
    _one_line_error(cp, "cannot bind")
    assert took < 1.5, took


# ------------------------------------------------------------ warnings
#: the daemon with conntrack deletion made to fail (after a pause, so that requests overlap)
_CT_FAILS = ("import errno, sys, anyio\n"
             "import nlportmap.sidefx as sidefx\n"
             "async def failing(family, proto, port):\n"
             "    await anyio.sleep(0.3)\n"
             "    raise OSError(errno.EPERM, f'injected failure for {port}')\n"
             "sidefx.delete_conntrack = failing\n"
             "from nlportmap.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")


def test_warnings_come_back_through_the_daemon_to_their_own_request(env):
    env.start_daemon(python=("-c", _CT_FAILS))
    udp = list(range(8125, 8131))
    tcp = list(range(8131, 8134))

    def add(port: int) -> subprocess.CompletedProcess:
        proto = "udp" if port in udp else "tcp"
        return env.plugin(env.a, "ADD", f"c0ffe{port}", _conf(port, f"10.244.0.{port - 8100}", proto))

    with ThreadPoolExecutor(len(udp) + len(tcp)) as pool:
        results = dict(zip(udp + tcp, pool.map(add, udp + tcp), strict=True))
    assert [r["via"] for r in env.shim_lines()] == ["daemon"] * len(results)
    for port, cp in results.items():
        _ok(cp)
        warnings = [ln for ln in cp.stderr.decode().splitlines() if "conntrack" in ln]
        if port in udp:
            assert len(warnings) == 1, cp.stderr
            assert warnings[0].endswith(f"failed to delete stale UDP conntrack entries for ipv4 port {port}: "
                                        f"[Errno 1] injected failure for {port}"), warnings
        else:
            assert warnings == [], cp.stderr
    assert "conntrack" not in Path(env.daemon_log).read_text()  # not lost in the daemon's log


_STORM = ("import socket, sys\n"
          "from nlportmap.shim import encode_request\n"
          "frame = encode_request({b'CNI_COMMAND': b'VERSION', b'NLPORTMAP_LOCK_DIR': sys.argv[2].encode()}, b'')\n"
          "for i in range(int(sys.argv[3])):\n"
          "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
          "    s.connect(sys.argv[1])\n"
          "    if i % 2:\n"
          "        s.sendall(frame)  # a valid request (accepted), then gone before the reply\n"
          "    s.close()\n")


def test_abandoned_connections_log_one_brief_line_each(env):
    env.start_daemon()
    n = 40
    subprocess.run(["ip", "netns", "exec", env.a.name, sys.executable, "-c", _STORM, env.sock, env.lockdir,
                    str(n)], check=True, timeout=60, env=env.base_env())
    time.sleep(1)
    _ok(env.plugin(env.a, "ADD", "c0ffee0c", _conf(3232)))  # still serving
    log = Path(env.daemon_log).read_text()
    assert "Traceback" not in log and "BrokenPipeError: [Errno" not in log, log
    # a client gone before the daemon read its namespace is refused, one gone later "hung up":
    # which one each gets depends on scheduling, but each gets one short line
    assert "client hung up" in log or "refused" in log, log
    body = [ln for ln in log.splitlines() if "listening on" not in ln and "c0ffee0c" not in ln
            and "done ADD" not in ln and "accepted ADD" not in ln]
    assert len(body) <= 2 * n, log  # refusal (verbose) or hang-up: one line per connection
    assert all(len(ln) < 160 for ln in body), log


# ------------------------------------------------------------ a forged daemon
_FORGED = ("import socket, sys\n"
           "path, count = sys.argv[1], sys.argv[2]\n"
           "srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
           "srv.bind(path)\n"
           "srv.listen(8)\n"
           "open(count, 'a').close()\n"
           "out = b'{\"forged\": true}'\n"
           "reply = b'A' + bytes(4) + b'R' + (8 + len(out)).to_bytes(4, 'big') + bytes(4)"
           " + len(out).to_bytes(4, 'big') + out\n"
           "while True:\n"
           "    c, _ = srv.accept()\n"
           "    got = 0\n"
           "    try:\n"
           "        c.sendall(reply)\n"
           "        c.settimeout(1)\n"
           "        while True:\n"
           "            b = c.recv(65536)\n"
           "            if not b:\n"
           "                break\n"
           "            got += len(b)\n"
           "    except OSError:\n"
           "        pass\n"
           "    with open(count, 'a') as f:\n"
           "        f.write('%d\\n' % got)\n"
           "    c.close()\n")


def test_a_listener_that_is_not_root_is_never_believed(env):
    py = "/usr/bin/python3"
    if not os.access(py, os.X_OK) or not shutil.which("setpriv"):
        pytest.skip("needs /usr/bin/python3 and setpriv to run a server as nobody")
    theirs = os.path.join(env.dir, "nobody")
    os.mkdir(theirs, 0o700)
    os.chown(theirs, 65534, 65534)
    script = os.path.join(env.dir, "forged.py")
    with open(script, "w") as f:
        f.write(_FORGED)
    os.chmod(script, 0o644)
    sock, count = os.path.join(theirs, "f.sock"), os.path.join(theirs, "count")
    server = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-I", "-S",
                               script, sock, count], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(count):
            assert server.poll() is None and time.monotonic() < deadline, "forged server did not start"
            time.sleep(0.02)
        # 1. its socket in its own directory; 2. the same socket moved into a root-owned
        #    0755 directory (only SO_PEERCRED can tell)
        moved = os.path.join(env.dir, "moved.sock")
        for i, (path, why) in enumerate([(sock, "uid 65534, not root"), (moved, "uid 65534, not root")]):
            if path == moved:
                os.rename(sock, moved)
            cid = f"c0ffee1{i}"
            cp = env.plugin(env.a, "ADD", cid, _conf(3300 + i), NLPORTMAP_SOCKET=path)
            _ok(cp)
            assert b"forged" not in cp.stdout, cp.stdout
            assert json.loads(cp.stdout)["ips"][0]["address"] == "10.244.0.2/24"
            line = env.shim_lines()[-1]
            assert line["via"] == "in-process" and why in line["reason"], line
            assert f"{cid} tcp {3300 + i}" in env.elements(env.a)
        deadline = time.monotonic() + 10
        while len(Path(count).read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Path(count).read_text().split() == ["0", "0"]  # not one byte of any request reached it
    finally:
        kill_process(server)
    # 3. a root daemon, but its socket in a directory others may write: not believed either
    open_dir = os.path.join(env.dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    env.start_daemon(socket_args=("--socket", os.path.join(open_dir, "d.sock")))
    cp = env.plugin(env.a, "ADD", "c0ffee19", _conf(3309), NLPORTMAP_SOCKET=os.path.join(open_dir, "d.sock"))
    _ok(cp)
    line = env.shim_lines()[-1]
    assert line["via"] == "in-process" and "writable by group/others" in line["reason"], line
