"""The daemon's ClusterIP watcher: keep ``proxy_vips`` equal to the service proxy's addresses.

Every ADD refreshes the nftables set ``proxy_vips`` (the addresses on
``serviceProxyInterfaces``, e.g. kube-proxy's ``kube-ipvs0``; see README "Which addresses
count as the node's").  Between ADDs a new Service's ClusterIP would not be in it, and a
pod's hostPort would capture ``ClusterIP:port``.  Where the daemon runs, this thread closes
that gap: it listens to the rtnetlink groups ``RTNLGRP_IPV4_IFADDR`` (5) and
``RTNLGRP_IPV6_IFADDR`` (9) (linux/rtnetlink.h), and after an address appears on or
leaves any interface it waits :data:`DEBOUNCE` seconds (kube-proxy adds many at once),
reads the proxy interfaces' addresses again (:func:`nlportmap.proxyvips.proxy_addresses`)
and, when they changed, replaces the set's elements in one batch per family, under the
netns lock.  Only a table that is already ours is touched.  The interface names are the
newest self-healing record's ``serviceProxyInterfaces`` (the default when none says).
It runs with self-healing and is switched off with it (``--no-heal``, ``NLPORTMAP_HEAL=0``).
"""
from __future__ import annotations

import select
import threading
import time

import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

__all__ = ["DEBOUNCE", "VipWatcher"]

NETLINK_ROUTE = 0
RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR = 5, 9
#: seconds between the first address change and the refresh
DEBOUNCE = 0.1


def _names() -> tuple[str, ...]:
    """serviceProxyInterfaces of the newest nftables record, else the default."""
    from .netconf import DEFAULT_SERVICE_PROXY_INTERFACES
    from .restore import load_all
    newest = None
    for _, rec in load_all():  # sorted oldest first
        if rec is not None and rec.get("backend") == "nftables":
            newest = rec
    names = (newest or {}).get("conf", {}).get("serviceProxyInterfaces")
    return tuple(names) if isinstance(names, list) else DEFAULT_SERVICE_PROXY_INTERFACES


def refresh(names: tuple[str, ...], last: dict[int, list[bytes]] | None) -> dict[int, list[bytes]] | None:
    """Make ``proxy_vips`` hold the addresses now on ``names`` (both families, tables of
    ours only); returns what it wrote, or ``last`` when nothing changed."""
    from .lock import netns_lock
    from .nft import layout as L
    from .nft.wire import FAMILY, NetfilterSocket
    from .proxyvips import proxy_addresses
    vips = proxy_addresses(names)
    if last is not None and vips == last:
        return last
    sock = NetfilterSocket()
    try:
        with netns_lock():
            ops = []
            for fam in (4, 6):
                info = sock.tables([(FAMILY[fam], L.TABLE)])[0]
                if info is None or L.foreign_table(info):
                    continue  # no table of ours in this family: the next ADD creates it
                ops += L.proxy_vips_ops(fam, vips.get(fam, ()))
            if ops:
                sock.commit(ops)
    finally:
        sock.close()
    return vips


class VipWatcher:
    """A daemon thread refreshing ``proxy_vips`` on address changes; :meth:`close` stops it."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        s.bind((0, (1 << (RTNLGRP_IPV4_IFADDR - 1)) | (1 << (RTNLGRP_IPV6_IFADDR - 1))))
        s.setblocking(False)
        self._sock = s
        self._stop = threading.Event()
        self._last: dict[int, list[bytes]] | None = None
        self._thread = threading.Thread(target=self._run, name="vip-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due: float | None = None
        while not self._stop.is_set():
            timeout = 0.5 if due is None else max(0.0, due - time.monotonic())
            r, _, _ = select.select([self._sock], [], [], timeout)
            if r:
                try:
                    while self._sock.recv(1 << 16):
                        pass
                except BlockingIOError:
                    pass
                except OSError:  # ENOBUFS: a lost notification counts as a change
                    pass
                if due is None:
                    due = time.monotonic() + DEBOUNCE
                continue
            if due is not None and time.monotonic() >= due:
                due = None
                try:
                    before = self._last
                    self._last = refresh(_names(), self._last)
                    if self._last is not before:
                        n = sum(len(v) for v in self._last.values()) if self._last else 0
                        self._log(f"proxy_vips: refreshed ({n} service proxy address(es))")
                except Exception as e:  # keep watching; the next ADD refreshes too
                    self._log(f"proxy_vips: refresh failed: {e}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
