"""Churn engine: many concurrent ADD/DEL/CHECK/GC calls against a model of what must exist.

Shared by the CI test (``tests/integration/test_churn.py``, a short run) and the
soak command (``python3 -m tests.soak``, >= 10,000 operations).

The workload
    ``make_attachments`` builds about 100 attachments (container ID + ifname) on
    two networks, IPv4-only, IPv6-only and dual-stack, some containers with a
    second attachment (``net1``).  Host ports overlap on purpose: every
    *shared* mapping is given to ``sharers`` attachments (different container
    ports, different spellings of the same host address: none/``0.0.0.0``/``::``,
    ``10.99.0.1``/``::ffff:10.99.0.1``, ...), so ADDs keep taking ports over
    from each other.  Some attachments use ``conflictPolicy: reject``.

The runtime emulation
    ``workers`` threads pick random operations: ADD, DEL, CHECK on a random
    attachment, GC of one network.  Like a CNI runtime, never two operations on
    the same container at once, and GC exclusive with everything else (CNI
    spec); a failed ADD is followed by the runtime's DEL.  GC lists the
    attachments the runtime believes exist minus a few it "forgot".  Each
    operation either execs the real plugin in the node namespace (as a runtime
    does) or runs :func:`nlportmap.skel.run` in a worker thread that has
    ``setns()``-ed into the node namespace (``exec_fraction`` decides).

The model (:class:`Model`)
    Per host key ``(family, proto, hostIP|None, hostPort)``: the live claimants
    in ADD order and the current owner.  ADD (``replace``) takes every key of the
    attachment; ADD (``reject``) fails, changing nothing, if another attachment
    owns one of its keys; DEL removes the attachment's claims and, where it
    owned a key, hands the key to :func:`successor`; GC does the same for every
    attachment of that network not listed; CHECK succeeds iff the attachment
    owns all its keys (and its masquerade elements exist).  :func:`successor`
    is *the* policy rule "who gets a port back when its owner goes away" and
    the only place to change if that rule changes.

The linearization
    Mutating operations are serialized in the kernel (per-netns flock + one
    nftables transaction each), but the order of concurrent ones is not known
    in advance.  A netlink listener (:class:`GenMonitor`) records every
    committed generation with the *thread id* that committed it
    (``NFTA_GEN_PROC_PID``): the exec'd plugin's PID, or the worker thread's TID.
    Each operation also records the generation before it started and after it
    ended.  At every checkpoint (all workers paused) the model replays the
    committed operations in generation order; operations that committed nothing
    (CHECK, identical re-ADD, DEL of nothing, rejected ADD) must match the model
    at *some* state inside their window.  Then the kernel's elements (all sets
    of ``table ip/ip6 nlportmap``, owner comments without the creation stamp)
    must equal the model's, exactly.

Known limitation: creation stamps have millisecond resolution and GC spares
elements created at or after its own start, so the driver waits 2 ms before a
GC (a runtime's GC never races an ADD it has already seen complete in the same
millisecond in practice).
"""
from __future__ import annotations

import io
import ipaddress
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

_HERE = os.path.dirname(os.path.abspath(__file__))
_INTEGRATION = os.path.join(os.path.dirname(_HERE), "integration")
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_INTEGRATION, os.path.join(_ROOT, "netns-fixtures")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from nlportmap.nft import layout as L  # noqa: E402
from nlportmap.nft import netlink as N  # noqa: E402
from netns_fixtures.netns import enter_netns  # noqa: E402

NODE_IP4, NODE_IP6 = "10.99.0.1", "fd00:99::1"
NETWORKS = ("churn-a", "churn-b")
_STAMP = re.compile(r" @\d+$")

# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class PM:
    """One port mapping as sent in ``runtimeConfig.portMappings``."""
    host_port: int
    container_port: int
    proto: str
    host_ip: str | None = None

    def to_json(self) -> dict:
        d = {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.proto}
        if self.host_ip is not None:
            d["hostIP"] = self.host_ip
        return d


@dataclass(frozen=True)
class Attachment:
    cid: str
    ifname: str
    network: str
    ip4: str | None          # address without prefix
    ip6: str | None
    mappings: tuple
    policy: str = "replace"  # conflictPolicy

    @property
    def tag(self) -> str:
        return f"{self.cid}/{self.ifname}"

    @property
    def comment(self) -> str:
        """Owner comment without the creation stamp."""
        return f"{self.tag} {self.network}"

    @property
    def owner_hash(self) -> bytes:
        """The 16 bytes naming this owner in ``claims``/``owned`` keys."""
        from nlportmap.plan import Owner
        return Owner(self.cid, self.ifname, self.network).hash

    def ip(self, fam: int) -> str | None:
        return self.ip4 if fam == 4 else self.ip6

    def forwards(self) -> dict:
        """{(fam, proto, hostIP|None, hostPort): (container IP, container port)} -- derived from
        the documented semantics (reference §2.5), not from nlportmap.plan: a hostIP of the
        other family is skipped, 0.0.0.0/:: mean any address, IPv4-mapped IPv6 is IPv4,
        the first of duplicate keys wins."""
        out: dict = {}
        for fam in (4, 6):
            cip = self.ip(fam)
            if cip is None:
                continue
            for m in self.mappings:
                hip = None
                if m.host_ip:
                    a = ipaddress.ip_address(m.host_ip)
                    if a.version == 6 and a.ipv4_mapped is not None:
                        a = a.ipv4_mapped
                    if a.version != fam:
                        continue
                    hip = None if a.is_unspecified else str(a)
                key = (fam, m.proto, hip, m.host_port)
                out.setdefault(key, (cip, m.container_port))
        return out

    def masq_families(self) -> set:
        return {k[0] for k in self.forwards()}

    # -- CNI inputs
    def prev_result(self) -> dict:
        ifaces = [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                  {"name": f"veth{zlib.crc32(self.tag.encode()) % 10**6}", "mac": "aa:bb:cc:00:00:02"},
                  {"name": self.ifname, "mac": "aa:bb:cc:00:00:03", "sandbox": f"/run/netns/nlpm-churn-{self.cid[:8]}"}]
        ips = [{"address": "10.1.0.1/16", "interface": 0}]  # a host-side address that must be ignored
        if self.ip4:
            ips.append({"address": f"{self.ip4}/16", "gateway": "10.244.0.1", "interface": 2})
        if self.ip6:
            ips.append({"address": f"{self.ip6}/64", "interface": 2})
        return {"cniVersion": "1.0.0", "interfaces": ifaces, "ips": ips}

    def conf(self, with_prev: bool = True) -> dict:
        c = {"cniVersion": "1.0.0", "name": self.network, "type": "portmap",
             "capabilities": {"portMappings": True},
             "runtimeConfig": {"portMappings": [m.to_json() for m in self.mappings]}}
        if with_prev:
            c["prevResult"] = self.prev_result()
        if self.policy != "replace":
            c["conflictPolicy"] = self.policy
        return c


_ANY_SPELLINGS = (None, "0.0.0.0", "::")
_NODE4_SPELLINGS = (NODE_IP4, "::ffff:10.99.0.1")
_NODE6_SPELLINGS = (NODE_IP6, "FD00:99:0::1")


def make_attachments(n: int = 100, *, sharers: int = 3, seed: int = 0) -> list[Attachment]:
    """``n`` attachments; every shared mapping (one host key) is used by exactly ``sharers``
    attachments (see module doc).  Deterministic for a seed."""
    rng = random.Random(seed)
    counts = [rng.choice((1, 1, 2, 2, 3)) for _ in range(n)]
    want_shared = [max(0, c - (1 if rng.random() < 0.3 else 0)) for c in counts]
    pool = [i for i in range(n) for _ in range(want_shared[i])]
    rng.shuffle(pool)
    mappings: list[list] = [[] for _ in range(n)]
    port = 8000
    while len(pool) >= sharers:
        group, rest = [], []
        for i in pool:
            (group if len(group) < sharers and i not in group else rest).append(i)
        if len(group) < sharers:
            break
        pool = rest
        proto = rng.choice(("tcp", "tcp", "udp", "sctp"))
        kind = rng.choice(("any", "any", "any", "node4", "node6"))
        spellings = {"any": _ANY_SPELLINGS, "node4": _NODE4_SPELLINGS, "node6": _NODE6_SPELLINGS}[kind]
        for i in group:
            mappings[i].append(PM(port, rng.randint(1, 9000), proto, rng.choice(spellings)))
        port += 1
    uport = 20000
    for i in range(n):
        while len(mappings[i]) < counts[i]:
            mappings[i].append(PM(uport, rng.randint(1, 9000), rng.choice(("tcp", "udp")),
                                  rng.choice((None, None, NODE_IP4, NODE_IP6))))
            uport += 1
        rng.shuffle(mappings[i])
    out = []
    for i in range(n):
        r = rng.random()
        fams = (4, 6) if r < 0.6 else ((4,) if r < 0.8 else (6,))
        cid = f"{i:03d}{rng.getrandbits(32):08x}churn"
        if i % 10 == 9:  # a second attachment of the previous container
            cid = out[-1].cid
        ifname = "net1" if (out and cid == out[-1].cid) else "eth0"
        out.append(Attachment(
            cid=cid, ifname=ifname, network=NETWORKS[i % 2 if ifname == "eth0" else 1],
            ip4=f"10.244.{i // 200}.{i % 200 + 2}" if 4 in fams else None,
            ip6=f"fd00:244::{i + 2:x}" if 6 in fams else None,
            mappings=tuple(mappings[i]),
            policy="reject" if rng.random() < 0.15 else "replace"))
    return out


# --------------------------------------------------------------------------- model


def successor(claimants: list[str]) -> str | None:
    """THE rule: who owns a key after its owner was deleted (DEL or GC).

    ``claimants``: the surviving live claimants of the key, oldest ADD first.
    Current nlportmap semantics (conflictPolicy ``replace``, README): the
    displaced claim is restored -- taken here as *the newest surviving claim*
    (so "the newest live ADD owns the port" holds at all times).  Before the
    claims map existed the answer was ``None`` (nobody).
    """
    if not RESTORES_CLAIMS:
        return None
    return claimants[-1] if claimants else None


#: Does this nlportmap keep displaced claims?  (layout has the ``claims`` map)
RESTORES_CLAIMS = hasattr(L, "CLAIMS")


@dataclass
class Op:
    kind: str                      # ADD DEL CHECK GC
    att: Attachment | None = None
    network: str | None = None     # GC
    valid: tuple = ()              # GC: tags listed
    with_prev: bool = True

    def __str__(self) -> str:
        if self.kind == "GC":
            return f"GC {self.network} valid={len(self.valid)}"
        return f"{self.kind} {self.att.tag}"


class Model:
    def __init__(self, atts: list[Attachment]):
        self.atts = {a.tag: a for a in atts}
        self.claims: dict[tuple, list[str]] = {}   # key -> live claimants, oldest first
        self.owner: dict[tuple, str] = {}          # key -> tag
        self.added: set[str] = set()               # tags whose ADD succeeded and that were not removed since

    def copy(self) -> Model:
        m = Model.__new__(Model)
        m.atts = self.atts
        m.claims = {k: list(v) for k, v in self.claims.items()}
        m.owner = dict(self.owner)
        m.added = set(self.added)
        return m

    # -- semantics
    def check_ok(self, a: Attachment) -> bool:
        fw = a.forwards()
        return not fw or (a.tag in self.added and all(self.owner.get(k) == a.tag for k in fw))

    def add_fails(self, a: Attachment) -> bool:
        return a.policy == "reject" and any(self.owner.get(k) not in (None, a.tag) for k in a.forwards())

    def _drop(self, tags: set) -> None:
        for k in list(self.claims):
            cl = [t for t in self.claims[k] if t not in tags]
            self.claims[k] = cl
            if self.owner.get(k) in tags:
                nxt = successor(cl)
                if nxt is None:
                    self.owner.pop(k)
                else:
                    self.owner[k] = nxt
            if not cl:
                del self.claims[k]
        self.added -= tags

    def outcome(self, op: Op) -> bool:
        """Must the call succeed?"""
        if op.kind == "ADD":
            return not self.add_fails(op.att)
        if op.kind == "CHECK":
            return self.check_ok(op.att)
        return True

    def apply(self, op: Op) -> None:
        if op.kind == "ADD":
            a = op.att
            if self.add_fails(a):
                return
            for k in a.forwards():
                cl = [t for t in self.claims.get(k, []) if t != a.tag] + [a.tag]
                self.claims[k] = cl
                self.owner[k] = a.tag
            self.added.add(a.tag)
        elif op.kind == "DEL":
            self._drop({op.att.tag})
        elif op.kind == "GC":
            self._drop({t for t in self.added if self.atts[t].network == op.network and t not in op.valid})

    # -- expected kernel state
    def elements(self) -> dict:
        """Same shape as ``Node.elements()`` with comments stripped of the creation stamp."""
        out = {(fam, s): set() for fam in (4, 6) for s in L.SETS}
        for (fam, proto, hip, port), tag in self.owner.items():
            a = self.atts[tag]
            cip, cport = a.forwards()[(fam, proto, hip, port)]
            s, k = L.forward_key(fam, proto, hip, port)
            out[(fam, s)].add((k.hex(), L.forward_data(cip, cport).hex(), a.comment))
        for tag in self.added:
            a = self.atts[tag]
            for fam in a.masq_families():
                cip = a.ip(fam)
                net = str(ipaddress.ip_interface(f"{cip}/{16 if fam == 4 else 64}").network)  # prev_result()
                pairs = [(net, cip)] + ([("127.0.0.1", cip)] if fam == 4 else [])
                for sa, da in pairs:
                    s, k = L.masq_key(sa, da)
                    out[(fam, s)].add(((k[0] if isinstance(k, tuple) else k).hex(), None, a.comment))
        if RESTORES_CLAIMS:
            for (fam, proto, hip, port), cl in self.claims.items():
                for tag in cl:
                    if tag == self.owner.get((fam, proto, hip, port)):
                        continue
                    a = self.atts[tag]
                    cip, cport = a.forwards()[(fam, proto, hip, port)]
                    out[(fam, L.CLAIMS)].add((L.claim_key(proto, hip, port, a.owner_hash).hex(),
                                              L.claim_data(cip, cport).hex(), a.comment))
        if hasattr(L, "OWNED"):  # each attachment's manifest: its forwards per family, in plan order
            for tag in self.added:
                a = self.atts[tag]
                fw = a.forwards()
                for fam in (4, 6):
                    recs = [(k, v) for k, v in fw.items() if k[0] == fam]
                    for slot, ((_, proto, hip, port), (cip, _cport)) in enumerate(recs):
                        out[(fam, L.OWNED)].add((L.record_key(a.owner_hash, slot).hex(),
                                                 L.record_data(proto, hip, port, cip).hex(), a.comment))
        return out

    def adopt_owners(self, kernel: dict) -> int:
        """Follow the kernel where it handed a key to *another surviving claimant* than
        :func:`successor` names (so one such divergence is reported once, not at every
        later checkpoint).  Returns the number of keys adopted."""
        n = 0
        for fam in (4, 6):
            for s in (L.HOSTPORTS, L.HOSTIP_HOSTPORTS):
                for key_hex, _data, comment in kernel.get((fam, s), ()):
                    proto, hip, port = L.parse_forward_key(fam, s, bytes.fromhex(key_hex))
                    k = (fam, proto, hip, port)
                    tag = (comment or "").split(" ", 1)[0]
                    cl = self.claims.get(k, [])
                    if tag != self.owner.get(k) and tag in cl:
                        cl.remove(tag)
                        cl.append(tag)
                        self.owner[k] = tag
                        n += 1
        return n


def normalise(elements: dict) -> dict:
    """Kernel elements with the creation stamp removed from every comment."""
    return {k: {(key, data, _STAMP.sub("", c) if c else c) for key, data, c in v} for k, v in elements.items()}


def diff_elements(want: dict, have: dict, limit: int = 12) -> list[str]:
    lines = []
    for k in sorted(set(want) | set(have)):
        w, h = want.get(k, set()), have.get(k, set())
        for e in sorted(w - h, key=str):
            lines.append(f"missing in kernel {k}: {e}")
        for e in sorted(h - w, key=str):
            lines.append(f"unexpected in kernel {k}: {e}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


# --------------------------------------------------------------------------- kernel side

NFNLGRP_NFTABLES = 7
NETLINK_ADD_MEMBERSHIP = 1
NFT_MSG_NEWGEN = 15


class GenMonitor:
    """Records ``(generation, committing thread id)`` of every nftables commit in a netns.

    Subscribes to ``NFNLGRP_NFTABLES`` with a socket created inside the
    namespace; a reader thread keeps only ``NEWGEN`` notifications.  An
    overflowed receive buffer (ENOBUFS) is recorded in ``overflow`` -- the
    linearization is then unknown and the run must not be trusted.
    """

    def __init__(self, ns):
        def make():
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 12)
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((0, 0))
            s.setsockopt(270, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            return s
        self.sock = ns.call(make)
        self.sock.settimeout(0.2)
        self.events: list[tuple[int, int, str]] = []
        self.overflow = 0
        self.max_gen = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="nlpm-genmon", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                buf = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS
                    self.overflow += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            off = 0
            while off + 16 <= len(buf):
                ln, typ, _flg, _sq, _pid = struct.unpack_from("=IHHII", buf, off)
                if ln < 16:
                    break
                if typ == (10 << 8) | NFT_MSG_NEWGEN:
                    a, attrs = off + 20, {}
                    while a + 4 <= off + ln:
                        al, at = struct.unpack_from("=HH", buf, a)
                        if al < 4:
                            break
                        attrs[at & 0x3FFF] = buf[a + 4:a + al]
                        a += (al + 3) & ~3
                    if 1 in attrs:
                        gen = struct.unpack("!I", attrs[1])[0]
                        pid = struct.unpack("!I", attrs[2])[0] if 2 in attrs else 0
                        name = attrs.get(3, b"").rstrip(b"\0").decode(errors="replace")
                        with self._lock:
                            self.events.append((gen, pid, name))
                            self.max_gen = max(self.max_gen, gen)
                off += (ln + 3) & ~3

    def wait_for(self, gen: int, timeout: float = 10.0) -> bool:
        """Wait until the notification of generation ``gen`` was read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.max_gen >= gen:
                return True
            time.sleep(0.01)
        return False

    def since(self, gen: int) -> list[tuple[int, int, str]]:
        with self._lock:
            return sorted(e for e in self.events if e[0] > gen)

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


def foreign_committer(ns_path: str, interval: float, stop: threading.Event, report=None) -> int:
    """Be another nftables user in ``ns_path``: commit (add or delete a table of its own)
    every ``interval`` s until ``stop``; every commit moves the ruleset generation.
    Runs in the calling thread (setns'd); returns the number of commits."""
    enter_netns(ns_path)
    sock = N.NetfilterSocket()
    n = 0
    try:
        while not stop.is_set():
            name = f"nlpm_foreign{(n // 2) % 3}"
            sock.commit([N.table(N.NFPROTO_IPV4, name)] if n % 2 == 0 else [N.del_table(N.NFPROTO_IPV4, name)])
            n += 1
            if report is not None:
                report.foreign_commits_made = n
            stop.wait(interval)
    finally:
        sock.close()
    return n


# --------------------------------------------------------------------------- running one call


@dataclass
class Record:
    op: Op
    mode: str            # exec | inproc
    ident: int           # PID or TID that would commit
    g0: int
    g1: int
    rc: int
    out: str
    err: str
    seconds: float
    seq: int = 0


def cni_env(op: Op) -> dict:
    if op.kind == "GC":
        return {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}
    a = op.att
    return {"CNI_COMMAND": op.kind, "CNI_CONTAINERID": a.cid, "CNI_IFNAME": a.ifname,
            "CNI_NETNS": f"/run/netns/nlpm-churn-gone-{a.cid[:8]}", "CNI_PATH": "/usr/lib/cni",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=churn"}


def cni_stdin(op: Op) -> bytes:
    if op.kind == "GC":
        conf = {"cniVersion": "1.1.0", "name": op.network, "type": "portmap",
                "cni.dev/valid-attachments": [{"containerID": t.rsplit("/", 1)[0], "ifname": t.rsplit("/", 1)[1]}
                                              for t in sorted(op.valid)]}
    else:
        conf = op.att.conf(with_prev=op.with_prev)
    return json.dumps(conf).encode()


# Settings for every call (exec and in-process): no daemon, so that the committing
# thread is the plugin's own.
CALL_ENV = {"NLPORTMAP_SOCKET": "off"}


def call_exec(node, op: Op, exe: str, timeout: float = 60.0) -> tuple[int, int, str, str]:
    env = {**cni_env(op), **CALL_ENV}
    p = node.host.popen(exe, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(cni_stdin(op), timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return p.pid, 124, out.decode(errors="replace"), err.decode(errors="replace") + "\n[timeout]"
    return p.pid, p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def call_inproc(op: Op) -> tuple[int, int, str, str]:
    """Run the plugin in this (setns'd) thread exactly as ``nlportmap`` would."""
    from nlportmap.plugin import Plugin
    from nlportmap.skel import run
    out, err = io.StringIO(), io.StringIO()
    plugin = Plugin()
    try:
        rc = run(cni_env(op), io.BytesIO(cni_stdin(op)), out, err, plugin)
    finally:
        b = getattr(plugin, "_backend", None)
        if b is not None and hasattr(b, "close"):
            b.close()
    return threading.get_native_id(), rc, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    ops: int = 0
    seconds: float = 0.0
    by_kind: Counter = field(default_factory=Counter)
    by_mode: Counter = field(default_factory=Counter)
    expected_failures: int = 0
    commits: int = 0
    foreign_commits: int = 0         # commits in the node by nobody we started (seen by the monitor)
    foreign_commits_made: int = 0    # commits of the foreign-user thread
    noop_commits: int = 0
    checkpoints: int = 0
    takeovers: int = 0
    restores: int = 0
    divergences: list = field(default_factory=list)
    final_elements: int = 0

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{self.ops} operations in {self.seconds:.1f} s = {self.ops_per_second:.1f} ops/s "
                f"({dict(self.by_kind)}; {dict(self.by_mode)}); {self.commits} commits, "
                f"{self.takeovers} takeovers, {self.restores} restores, "
                f"{self.foreign_commits} foreign commits, "
                f"{self.expected_failures} failures the model required, {self.checkpoints} checkpoints, "
                f"{self.final_elements} elements at the end; divergences: {len(self.divergences)}")


class _Gate:
    """Shared/exclusive gate: ordinary ops share it, GC and checkpoints hold it alone."""

    def __init__(self):
        self.cond = threading.Condition()
        self.active = 0
        self.exclusive = False

    def enter(self, exclusive: bool) -> None:
        with self.cond:
            while self.exclusive:
                self.cond.wait()
            if exclusive:
                self.exclusive = True
                while self.active:
                    self.cond.wait()
            self.active += 1

    def leave(self, exclusive: bool) -> None:
        with self.cond:
            self.active -= 1
            if exclusive:
                self.exclusive = False
            self.cond.notify_all()


class Churn:
    """One churn run on a :class:`nlpm_helpers.Node` (see module doc)."""

    def __init__(self, node, atts: list[Attachment], *, workers: int = 8, exec_fraction: float = 1.0,
                 seed: int = 0, weights=None, checkpoint_every: int = 100, exe: str | None = None,
                 forget_max: int = 2, log=None, progress=None, adopt: bool = False,
                 foreign_interval: float | None = None):
        from nlpm_helpers import EXE
        self.node = node
        self.atts = atts
        self.workers = workers
        self.exec_fraction = exec_fraction
        self.rng = random.Random(seed)
        self.weights = weights or {"ADD": 40, "DEL": 30, "CHECK": 25, "GC": 5}
        self.checkpoint_every = checkpoint_every
        self.exe = exe or EXE
        self.forget_max = forget_max
        self.log = log or (lambda msg: None)
        self.progress = progress or (lambda report, gen: None)
        self.adopt = adopt
        self.foreign_interval = foreign_interval
        self._seen: set[str] = set()
        self.model = Model(atts)
        self.report = Report()
        self.runtime_added: set[str] = set()   # what the runtime believes (GC lists these)
        self.busy: set[str] = set()             # container IDs with a call in flight
        self.lock = threading.Lock()
        self.gate = _Gate()
        self.records: list[Record] = []
        self.seq = 0
        self.tickets = 0
        self.errors: list[BaseException] = []
        self.ns_path = node.host.path
        self._gen_sock = node.host.call(N.NetfilterSocket)
        self._gen_lock = threading.Lock()
        self.monitor = GenMonitor(node.host)
        self.base_gen = self.genid()

    def genid(self) -> int:
        with self._gen_lock:
            return self._gen_sock.genid()

    def close(self) -> None:
        self.monitor.close()
        self._gen_sock.close()

    # -- choosing work
    def _pick(self) -> Op | None:
        """Under self.lock: a random op on a container that is not busy (marked busy)."""
        kinds = list(self.weights)
        kind = self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]
        if kind == "GC":
            net = self.rng.choice(NETWORKS)
            listed = sorted(t for t in self.runtime_added if self.model.atts[t].network == net)
            forget = set(self.rng.sample(listed, min(len(listed), self.rng.randint(0, self.forget_max))))
            return Op("GC", network=net, valid=tuple(t for t in listed if t not in forget))
        free = [a for a in self.atts if a.cid not in self.busy]
        if not free:
            return None
        a = self.rng.choice(free)
        self.busy.add(a.cid)
        return Op(kind, att=a)

    def _call(self, op: Op) -> Record:
        use_exec = self.rng.random() < self.exec_fraction
        g0 = self.genid()
        t0 = time.perf_counter()
        if use_exec:
            ident, rc, out, err = call_exec(self.node, op, self.exe)
        else:
            ident, rc, out, err = call_inproc(op)
        dt = time.perf_counter() - t0
        g1 = self.genid()
        rec = Record(op, "exec" if use_exec else "inproc", ident, g0, g1, rc, out, err, dt)
        with self.lock:
            self.seq += 1
            rec.seq = self.seq
            self.records.append(rec)
            self.report.ops += 1
            self.report.by_kind[op.kind] += 1
            self.report.by_mode[rec.mode] += 1
            if op.kind == "ADD":
                (self.runtime_added.add if rc == 0 else self.runtime_added.discard)(op.att.tag)
            elif op.kind == "DEL" and rc == 0:
                self.runtime_added.discard(op.att.tag)
            elif op.kind == "GC" and rc == 0:
                self.runtime_added = {t for t in self.runtime_added
                                      if self.model.atts[t].network != op.network or t in op.valid}
        return rec

    def _worker(self, budget: int) -> None:
        try:
            enter_netns(self.ns_path)
            while True:
                with self.lock:
                    if self.tickets >= budget:
                        return
                    self.tickets += 1
                    checkpoint = self.tickets % self.checkpoint_every == 0
                if checkpoint:
                    self.gate.enter(True)
                    try:
                        self.checkpoint()
                    finally:
                        self.gate.leave(True)
                while True:
                    with self.lock:
                        op = self._pick()
                    if op is not None:
                        break
                    time.sleep(0.001)
                excl = op.kind == "GC"
                self.gate.enter(excl)
                try:
                    if excl:
                        time.sleep(0.002)  # creation stamps are ms-resolution (module doc)
                    rec = self._call(op)
                    if op.kind == "ADD" and rec.rc != 0:
                        self._call(Op("DEL", att=op.att))  # the runtime cleans up a failed ADD
                finally:
                    self.gate.leave(excl)
                    if op.att is not None:
                        with self.lock:
                            self.busy.discard(op.att.cid)
        except BaseException as e:  # reported by run()
            self.errors.append(e)

    def _foreign(self, stop: threading.Event) -> None:
        try:
            foreign_committer(self.ns_path, self.foreign_interval, stop, self.report)
        except BaseException as e:
            self.errors.append(e)

    def run(self, ops: int) -> Report:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self._worker, args=(ops,), name=f"nlpm-churn-{i}", daemon=True)
                   for i in range(self.workers)]
        stop = threading.Event()
        foreign = None
        if self.foreign_interval is not None:
            foreign = threading.Thread(target=self._foreign, args=(stop,), name="nlpm-churn-foreign", daemon=True)
            foreign.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        if foreign is not None:
            foreign.join(10)
        self.report.seconds = time.perf_counter() - t0
        if self.errors:
            raise self.errors[0]
        self.checkpoint()
        return self.report

    # -- verification
    def _diverge(self, msg: str) -> None:
        key = re.sub(r"^checkpoint \d+: ", "", msg)
        if key in self._seen:  # the same difference still there at a later checkpoint
            return
        self._seen.add(key)
        self.report.divergences.append(msg)
        self.log(f"DIVERGENCE: {msg}")

    def checkpoint(self) -> None:
        """All workers paused: replay this segment in commit order, then compare the kernel."""
        with self.lock:
            recs, self.records = self.records, []
        base, now = self.base_gen, self.genid()
        self.base_gen = now
        self.report.checkpoints += 1
        if now > base and not self.monitor.wait_for(now):
            self._diverge(f"generation monitor never saw generation {now}")
        if self.monitor.overflow:
            self._diverge(f"generation monitor overflowed {self.monitor.overflow} times: order unknown")
        commit_of: dict[int, int] = {}       # record index -> generation it committed
        for gen, pid, _name in self.monitor.since(base):
            if gen > now:
                continue
            owners = [i for i, r in enumerate(recs) if r.ident == pid and r.g0 < gen <= r.g1]
            if not owners:
                self.report.foreign_commits += 1
                continue
            if len(owners) > 1 or owners[0] in commit_of:
                self._diverge(f"generation {gen}: a second commit by one call "
                              f"({[str(recs[i].op) for i in owners]})")
                continue
            commit_of[owners[0]] = gen
        self.report.commits += len(commit_of)
        committed = sorted(commit_of, key=commit_of.get)
        pending = [i for i in range(len(recs)) if i not in commit_of]
        done: set[int] = set()
        m = self.model
        # state s (after s commits of this segment) is current for generations [start[s], start[s+1])
        start = [base] + [commit_of[i] for i in committed]

        def settle(s: int) -> None:
            lo, hi = start[s], (start[s + 1] if s + 1 < len(start) else None)
            for i in pending:
                r = recs[i]
                if i in done or r.g1 < lo or (hi is not None and r.g0 >= hi):
                    continue
                if self._noop_matches(m, r):
                    m.apply(r.op)
                    done.add(i)
                    if r.rc != 0:
                        self.report.expected_failures += 1

        settle(0)
        for s, i in enumerate(committed, start=1):
            r = recs[i]
            if r.rc != 0:
                self._diverge(f"{r.op} ({r.mode}) committed generation {commit_of[i]} but failed "
                              f"rc={r.rc}: {r.out.strip()[:300]}")
            elif not m.outcome(r.op):
                self._diverge(f"{r.op} ({r.mode}) succeeded and committed, the model says it must fail")
            before = m.elements()
            self._count_conflicts(m, r.op)
            m.apply(r.op)
            if m.elements() == before:
                self.report.noop_commits += 1
            settle(s)
        for i in pending:
            if i not in done:
                r = recs[i]
                self._diverge(f"{r.op} ({r.mode}) rc={r.rc} committed nothing in generations "
                              f"{r.g0}..{r.g1}, and no model state there agrees "
                              f"(model says {'succeed' if m.outcome(r.op) else 'fail'}; "
                              f"out={r.out.strip()[:300]!r} err={r.err.strip()[-300:]!r})")
        have = normalise(self.node.elements())
        want = m.elements()
        self.report.final_elements = sum(len(v) for v in have.values())
        if have != want:
            for line in diff_elements(want, have):
                self._diverge(f"checkpoint {self.report.checkpoints}: {line}")
            if self.adopt and m.adopt_owners(have) and m.elements() == have:
                self.log("model now follows the kernel's choice of restored claims")
        self.progress(self.report, now)

    def _noop_matches(self, m: Model, r: Record) -> bool:
        """Does a call that committed nothing agree with model state ``m``?"""
        ok = m.outcome(r.op)
        if (r.rc == 0) != ok:
            return False
        if not ok:
            return True  # failed and changed nothing, as the model says
        trial = m.copy()
        before = trial.elements()
        trial.apply(r.op)
        return trial.elements() == before

    def _count_conflicts(self, m: Model, op: Op) -> None:
        if op.kind == "ADD" and not m.add_fails(op.att):
            self.report.takeovers += sum(1 for k in op.att.forwards() if m.owner.get(k) not in (None, op.att.tag))
        elif op.kind in ("DEL", "GC"):
            gone = {op.att.tag} if op.kind == "DEL" else {
                t for t in m.added if m.atts[t].network == op.network and t not in op.valid}
            for k, t in m.owner.items():
                if t in gone and any(c not in gone for c in m.claims.get(k, [])):
                    self.report.restores += 1


def run_churn(node, *, ops: int, workers: int = 8, containers: int = 100, sharers: int = 3,
              exec_fraction: float = 1.0, seed: int | None = None, checkpoint_every: int = 100,
              log=None, progress=None, adopt: bool = False, foreign_interval: float | None = None) -> Report:
    """Build the workload and run it on ``node``; returns the :class:`Report`."""
    seed = random.randrange(1 << 30) if seed is None else seed
    atts = make_attachments(containers, sharers=sharers, seed=seed)
    churn = Churn(node, atts, workers=workers, exec_fraction=exec_fraction, seed=seed,
                  checkpoint_every=checkpoint_every, log=log, progress=progress, adopt=adopt,
                  foreign_interval=foreign_interval)
    try:
        rep = churn.run(ops)
    finally:
        churn.close()
    rep.seed = seed  # type: ignore[attr-defined]
    return rep
