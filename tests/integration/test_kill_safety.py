"""Kill safety (issue 5, item 3): SIGKILL the plugin (and the daemon) at random points.

Invariant after every kill: the node's nlportmap state is exactly the state
before the call or exactly the state after it (never partial), the per-netns
lock is free at once (the kernel drops a dead holder's flock), and the next
ADD, DEL or GC converges to what the model (tests/soak/churn.py) says.

Kill points, cycled:

* ``random``  -- after a delay drawn uniformly over [0, 1.1 x] a measured call;
* ``locked``  -- the moment the plugin is seen holding the netns lock (the test
  polls ``flock(LOCK_NB)`` on the lock file): inside read-then-commit;
* ``committed`` -- right after the kernel reported the call's commit (its
  generation, with the plugin's PID): during side effects / upstream clean-up.

The "after" state is the state the same call produces when it is run again to
completion (ADD, DEL and GC are idempotent), and it is checked against the model.
"""
from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nlpm_helpers import EXE
from soak.churn import (CALL_ENV, PM, Attachment, GenMonitor, Model, Op, cni_env, cni_stdin,
                        normalise)

pytestmark = pytest.mark.root

NET = "nlpm-kill"
X = Attachment("killx" + "0" * 59, "eth0", NET, "10.244.0.2", "fd00:244::2",
               (PM(8080, 80, "tcp"), PM(5353, 53, "udp")))
# K takes 8080 over from X and brings 250 more mappings: >200 elements per set, so the
# transaction is several messages per set (ELEMS_PER_MSG) and still must be atomic.
K = Attachment("killk" + "0" * 59, "eth0", NET, "10.244.0.3", "fd00:244::3",
               (PM(8080, 8080, "tcp"), PM(9090, 90, "tcp", "10.99.0.1"), PM(9091, 91, "udp"),
                *(PM(30000 + i, 1000 + i, "tcp") for i in range(250))))


def snapshot(node) -> tuple:
    """Everything a kill could have half-done: every element (raw comments) and the ruleset."""
    return node.elements(), node.ruleset()


def spawn(node, op: Op, env: dict | None = None) -> subprocess.Popen:
    p = node.host.popen(EXE, env={**cni_env(op), **CALL_ENV, **(env or {})}, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(cni_stdin(op))
    p.stdin.close()
    return p


def finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out = p.stdout.read()
    err = p.stderr.read()
    p.wait(timeout)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def run_op(node, op: Op) -> tuple[int, str, str]:
    return finish(spawn(node, op))


class LockProbe:
    """The node's netns lock file (nlportmap.lock), probed without ever blocking."""

    def __init__(self, node):
        from nlportmap.lock import lock_path
        self.path = node.host.call(lock_path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def held_by_other(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        os.close(self.fd)


def kill_at(p: subprocess.Popen, mode: str, budget: float, probe: LockProbe, mon: GenMonitor,
            rng: random.Random) -> str:
    """SIGKILL ``p`` (by its PID) at a point chosen by ``mode``; returns what happened."""
    deadline = time.monotonic() + 30
    if mode == "random":
        time.sleep(rng.uniform(0, 1.1 * budget))
    elif mode == "locked":
        while p.poll() is None and time.monotonic() < deadline and not probe.held_by_other():
            time.sleep(0.0002)
    elif mode == "committed":
        seen = len(mon.events)
        while p.poll() is None and time.monotonic() < deadline:
            if any(pid == p.pid for _, pid, _ in mon.events[seen:]):
                break
            time.sleep(0.0002)
    if p.poll() is not None:
        return "finished first"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    return "killed" if p.returncode == -signal.SIGKILL else f"exited {p.returncode}"


def measure(node, op: Op, undo: Op) -> float:
    """Wall time of a complete call (median of 3), leaving the state as it was."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        assert run_op(node, op)[0] == 0
        times.append(time.perf_counter() - t)
        assert run_op(node, undo)[0] == 0
    return sorted(times)[1]


def test_sigkill_at_random_points_of_add_del_and_gc(node):
    rng = random.Random(int(os.environ.get("NLPM_KILL_SEED") or random.randrange(1 << 30)))
    model = Model([X, K])
    add_x, add_k, del_k = Op("ADD", att=X), Op("ADD", att=K), Op("DEL", att=K)
    gc_k = Op("GC", network=NET, valid=(X.tag,))
    assert run_op(node, add_x)[0] == 0
    model.apply(add_x)
    budget = measure(node, add_k, del_k)
    probe = LockProbe(node)
    mon = GenMonitor(node.host)
    outcomes = []
    try:
        for i in range(30):
            op = rng.choice((del_k, gc_k)) if K.tag in model.added else add_k
            mode = ("random", "locked", "committed")[i % 3]
            before = snapshot(node)
            p = spawn(node, op)
            what = kill_at(p, mode, budget, probe, mon, rng)
            finish(p)
            mid = snapshot(node)
            # the lock is free the moment the killed holder is gone
            assert not probe.held_by_other(), f"iteration {i}: lock still held after {what}"
            # converge: the same call again (or, after a DEL, a GC that drops K)
            again = gc_k if op is del_k and i % 2 else op
            rc, out, err = run_op(node, again)
            assert rc == 0, (i, op, out, err)
            after = snapshot(node)
            model.apply(op)
            assert normalise(after[0]) == model.elements(), f"iteration {i}: {op} did not converge"
            state = "before" if mid == before else "after" if mid == after else "PARTIAL"
            outcomes.append((str(op), mode, what, state))
            assert state != "PARTIAL", (i, str(op), mode, what, outcomes)
    finally:
        mon.close()
        probe.close()
    kills = [o for o in outcomes if o[2] == "killed"]
    assert kills, outcomes  # the test did kill (not every call finished before the signal)
    # X's claim on 8080 survived every kill (restored on DEL/GC of K, shadowed while K owns it)
    assert any(e[2].startswith(X.tag) for e in normalise(node.elements())[(4, "hostports")])


def test_stale_lock_file_and_killed_holder_never_block(node):
    """A killed plugin leaves its lock file behind; later ADD/DEL/GC do not wait on it."""
    assert run_op(node, Op("ADD", att=X))[0] == 0
    probe = LockProbe(node)
    try:
        assert os.path.exists(probe.path)
        # a process that dies holding the lock: flock is dropped by the kernel
        holder = subprocess.Popen([sys.executable, "-c",
                                   "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR);"
                                   "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                                   probe.path], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            assert probe.held_by_other()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
        assert not probe.held_by_other()
        for op in (Op("ADD", att=K), Op("DEL", att=K), Op("GC", network=NET, valid=(X.tag,))):
            rc, out, err = run_op(node, op)
            assert rc == 0, (op, out, err)
        m = Model([X, K])
        m.apply(Op("ADD", att=X))
        assert normalise(node.elements()) == m.elements()
    finally:
        probe.close()


# ----------------------------------------------------------------------- the daemon


def _start_daemon(node, sock: str, log: str, delay: float) -> subprocess.Popen:
    with open(log, "w") as f:
        d = node.host.popen(sys.executable, "-m", "nlportmap", "daemon", "--socket", sock, "--verbose",
                            env={"NLPORTMAP_DAEMON_TEST_DELAY": str(delay)}, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "listening on" not in Path(log).read_text():
        assert d.poll() is None and time.monotonic() < deadline, Path(log).read_text()
        time.sleep(0.02)
    return d


def test_daemon_sigkilled_at_random_points_mid_request(node):
    """The shim hands ADD/DEL to a daemon in the node namespace; the daemon is SIGKILLed at
    a random point of the request (before, inside or after its transaction).  The call
    still succeeds (the shim falls back in-process), the state is the model's, and a
    restarted daemon serves the next call."""
    rng = random.Random(int(os.environ.get("NLPM_KILL_SEED") or random.randrange(1 << 30)))
    tmp = tempfile.mkdtemp(prefix="nlpm-kill-daemon-")
    sock, log = os.path.join(tmp, "d.sock"), os.path.join(tmp, "daemon.log")
    env = {"NLPORTMAP_SOCKET": sock}
    model = Model([X, K])
    daemon = None
    try:
        assert run_op(node, Op("ADD", att=X))[0] == 0
        model.apply(Op("ADD", att=X))
        kills = 0
        for i in range(8):
            daemon = _start_daemon(node, sock, log, delay=rng.choice((0, 0.05)))
            op = Op("DEL", att=K) if K.tag in model.added else Op("ADD", att=K)
            p = node.host.popen(EXE, env={**cni_env(op), **env}, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            p.stdin.write(cni_stdin(op))
            p.stdin.close()
            time.sleep(rng.uniform(0.0, 0.12))
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGKILL)  # by PID: the daemon we started
                kills += 1
            daemon.wait(30)
            rc, out, err = finish(p)
            assert rc == 0, (i, str(op), out, err)
            model.apply(op)
            assert normalise(node.elements()) == model.elements(), (i, str(op))
        assert kills == 8
        # a fresh daemon serves the next call, and the state converges
        daemon = _start_daemon(node, sock, log, delay=0)
        op = Op("DEL", att=K) if K.tag in model.added else Op("ADD", att=K)
        p = node.host.popen(EXE, env={**cni_env(op), **env, "NLPORTMAP_DEBUG": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(cni_stdin(op))
        p.stdin.close()
        rc, out, err = finish(p)
        assert rc == 0, (out, err)
        model.apply(op)
        assert normalise(node.elements()) == model.elements()
        assert f"done {op.kind}" in Path(log).read_text()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
