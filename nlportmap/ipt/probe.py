"""Does this netns hold an iptables chain?  Answered without running an iptables tool.

A DEL must know whether the container owns anything before it pays for an
``iptables-save`` (busy nodes send many DELs for containers that own nothing,
e.g. DELs without portMappings, and every tool run competes with kube-proxy for
the xtables lock).  Upstream's per-container chain name is a pure function of
network name and container ID (:func:`nlportmap.ipt.rules.dn_chain`), so one
lookup by name answers it:

- iptables-nft (Debian 12's default): the chain is an nftables chain in table
  ``ip nat`` / ``ip6 nat``; one netlink GETCHAIN by name (no dump) on the
  project's socket (:class:`nlportmap.nft.netlink.NetfilterSocket`).  ENOENT
  (no such table or chain) means absent.
- iptables-legacy: chains live in x_tables, which netlink cannot see.  If this
  netns has a legacy ``nat`` table (``/proc/thread-self/net/ip{,6}_tables_names``)
  the answer is "maybe", and the caller runs the tools as before.  No legacy
  ``nat`` table means no legacy chain.

Any other failure (no nf_tables, no permission) also answers "maybe": the
probe may only ever save work, never skip a clean-up.
"""
from __future__ import annotations

import errno
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from ..nft.wire import NetfilterSocket

__all__ = ["ChainProbe"]


class ChainProbe:
    """``may_hold(fam, names)``: False only when none of the chains ``names`` can exist
    in family ``fam``'s ``nat`` table.  Opens one netlink socket lazily; :meth:`close`."""

    def __init__(self, table: str = "nat") -> None:
        self.table = table
        self._sock: NetfilterSocket | None = None
        self._failed = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ChainProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self) -> NetfilterSocket | None:
        if self._sock is None and not self._failed:
            try:
                from ..nft.wire import NetfilterSocket  # (netlink.py re-exports it; wire has no pyroute2)
                self._sock = NetfilterSocket()
            except (OSError, ImportError):
                self._failed = True
        return self._sock

    def chain_exists(self, fam: int, name: str) -> bool | None:
        """True/False from one GETCHAIN by name in ``ip``/``ip6`` ``nat``; None if unknown."""
        sock = self._socket()
        if sock is None:
            return None
        from ..nft import wire as N
        seq = sock.next_seq()
        body = (struct.pack("!BBH", N.FAMILY[fam], 0, 0)
                + N._nlstr(1, self.table)     # NFTA_CHAIN_TABLE
                + N._nlstr(3, name))          # NFTA_CHAIN_NAME
        try:
            r = sock.request([N._header(len(body), N.GETCHAIN, N.NLM_F_REQUEST, seq) + body], [seq])[seq]
        except OSError:
            return None
        if isinstance(r, int):
            return False if r == errno.ENOENT else None
        return True

    def may_hold(self, fam: int, names: Iterable[str]) -> bool:
        from ..presence import legacy_nat_present
        if legacy_nat_present(fam):
            return True
        for name in names:
            found = self.chain_exists(fam, name)
            if found is None or found:
                return True
        return False
