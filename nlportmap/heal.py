"""The daemon's healer: restore recorded mappings when nftables says they were deleted.

A thread of ``nlportmap daemon`` (:mod:`nlportmap.daemon`) listens to the nftables
multicast group ``NFNLGRP_NFTABLES`` on a ``NETLINK_NETFILTER`` socket.  The kernel
sends one message per object a committed batch created or deleted, then ``NEWGEN``
(with the committing process's pid).  A batch counts as *damage* when it deleted
something of ``table ip|ip6 nlportmap`` (DELTABLE, DELCHAIN, DELRULE, DELSET,
DELSETELEM) or re-created that table, or, for the iptables backend, deleted rules or
chains of iptables-nft's ``nat``/``raw`` tables (``iptables -t nat -F``/``-X``).  Batches
committed by the daemon itself (its requests, its restores) never count.

After damage the healer waits :data:`DEBOUNCE` seconds (a reload is many batches),
then runs :func:`nlportmap.restore.restore` for the affected backends.  restore
holds the netns lock and re-reads the records under it, so it never fights a DEL:
a DEL removes its objects and then its record in one hold of that lock, and only
records drive a restore.  A lost notification (receive buffer overrun) counts as
damage.  ``nlportmap daemon --no-heal`` or ``NLPORTMAP_HEAL=0`` turns it off.
iptables-legacy sends no notifications: there, run ``nlportmap restore``.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterator
    from typing import Any
    from .vipwatch import VipWatcher

__all__ = ["DEBOUNCE", "Healer", "enabled", "parse"]

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NEWTABLE, DELTABLE, DELCHAIN, DELRULE, DELSET, DELSETELEM, NEWGEN = 0, 2, 5, 8, 11, 14, 15
_DELS = frozenset({DELTABLE, DELCHAIN, DELRULE, DELSET, DELSETELEM})
_IPT_DELS = frozenset({DELTABLE, DELCHAIN, DELRULE})
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NFTA_GEN_PROC_PID = 2
#: seconds between the first damage and the restore (a reload is many batches)
DEBOUNCE = 0.15
TABLE = b"nlportmap"
IPT_TABLES = frozenset({b"nat", b"raw"})


def enabled(flag: bool = True) -> bool:
    """Healing is on unless ``--no-heal`` (``flag`` False) or ``NLPORTMAP_HEAL=0``."""
    return flag and os.environ.get("NLPORTMAP_HEAL", "1") not in ("0", "off", "no", "false")


def _attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4:
            return
        yield atype & 0x7FFF, buf[off + 4:off + alen]
        off += (alen + 3) & ~3


def parse(buf: bytes) -> Iterator[tuple[int, int, bytes | None, int | None]]:
    """Yield (msg type, family, table name or None, pid or None) of each nftables
    message in ``buf`` (``pid``: NEWGEN's committing process)."""
    off = 0
    while off + 16 <= len(buf):
        mlen, mtype = struct.unpack_from("=IH", buf, off)
        if mlen < 16 or off + mlen > len(buf):
            return
        if mtype >> 8 == NFNL_SUBSYS_NFTABLES and mlen >= 20:
            msg, family = mtype & 0xFF, buf[off + 16]
            table: bytes | None = None
            pid: int | None = None
            for t, v in _attrs(buf, off + 20, off + mlen):
                if t == 1 and msg != NEWGEN:
                    table = v.rstrip(b"\0")
                elif t == NFTA_GEN_PROC_PID and msg == NEWGEN and len(v) >= 4:
                    pid = struct.unpack("!I", v[:4])[0]
            yield msg, family, table, pid
        off += (mlen + 3) & ~3


class Healer(threading.Thread):
    """The healing thread.  ``log``: one-line messages; ``restore``: the restore function
    (``restore(backends=...) -> rows``; tests inject one)."""

    def __init__(self, log: Callable[[str], None], restore: Callable[..., list[dict[str, Any]]] | None = None,
                 debounce: float = DEBOUNCE) -> None:
        super().__init__(name="nlportmap-heal", daemon=True)
        self._log = log
        self._restore = restore
        self.debounce = debounce
        self._stop = threading.Event()
        self._sock = self._open()
        self._me = os.getpid()
        self.heals = 0

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((0, 0))
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    #: the companion ClusterIP watcher (nlportmap.vipwatch), stopped with this healer
    vips: VipWatcher | None = None

    def stop(self) -> None:
        self._stop.set()
        if self.vips is not None:
            self.vips.close()

    def _heal(self, which: set[str]) -> None:
        t = time.perf_counter()
        try:
            if self._restore is None:
                from .restore import restore
                rows = restore(backends=tuple(sorted(which)), log=self._log)
            else:
                rows = self._restore(backends=tuple(sorted(which)))
        except Exception as e:
            self._log(f"heal: restore failed: {type(e).__name__}: {getattr(e, 'msg', None) or e}")
            return
        if rows:
            self.heals += 1
            names = ", ".join(f"{r['containerID'][:12]}/{r['ifname']}" for r in rows)
            first = rows[0]["missing"][0] if rows[0]["missing"] else ""
            names += f" (first problem: {first[:160]})" if first else ""
            self._log(f"heal: restored {len(rows)} attachment(s) in {(time.perf_counter() - t) * 1000:.1f} ms "
                      f"({'+'.join(sorted(which))}): {names}")

    def run(self) -> None:
        try:
            self._heal({"nftables", "iptables"})  # whatever went missing while no daemon ran
            self._loop()
        finally:
            self._sock.close()

    def _loop(self) -> None:
        pending: set[str] = set()  # damage of the batch being received
        due: set[str] = set()      # damage of finished batches, waiting for the debounce
        deadline: float | None = None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while not self._stop.is_set():
            wait = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
            ready = poller.poll(int(wait * 1000))
            if ready:
                while True:
                    try:
                        buf = self._sock.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno == errno.ENOBUFS:  # notifications lost: assume the worst
                            due |= {"nftables", "iptables"}
                            deadline = deadline or time.monotonic() + self.debounce
                            continue
                        raise
                    for msg, family, table, pid in parse(buf):
                        if msg == NEWGEN:
                            if pending and pid != self._me:
                                due |= pending
                                if deadline is None:
                                    deadline = time.monotonic() + self.debounce
                            pending = set()
                        elif family in (NFPROTO_IPV4, NFPROTO_IPV6):
                            if table == TABLE and (msg in _DELS or msg == NEWTABLE):
                                pending.add("nftables")
                            elif table in IPT_TABLES and msg in _IPT_DELS:
                                pending.add("iptables")
            if deadline is not None and time.monotonic() >= deadline:
                which, due, deadline = due, set(), None
                self._heal(which)
