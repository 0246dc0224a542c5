"""Remove what the upstream Go ``portmap`` left behind for one container.

Nodes migrating from the upstream plugin still have containers whose rules
upstream created.  When such a container is deleted (DEL now reaches
nlportmap), :func:`cleanup_upstream` removes its upstream state:

- nftables backend (reference ``portmap-behaviour.md`` §4.2, §4.7): in the
  tables ``ip cni_hostport`` and ``ip6 cni_hostport``, the rules of chains
  ``hostports``, ``hostip_hostports`` and ``masquerading`` whose comment equals
  the container ID (all networks: upstream's identity is the ID alone, §6 item
  21).  Dumped over netlink and deleted by handle in one batch (a handle that
  vanished aborts it with ENOENT and the dump is repeated).  Tables, chains and the shared jump rules stay (as
  upstream's own DEL leaves them).
- iptables backend (§3.9): the chain ``CNI-DN-<sha512(name+id)>``, the legacy
  ``CNI-SN-<...>``, and every rule jumping to them, via
  :class:`nlportmap.ipt.backend.IptBackend` (only if that family's iptables
  tools are usable).

Missing tables, chains or tools mean there is nothing to do: this never fails
for missing state.
"""
from __future__ import annotations

import errno
import time

from .errors import KernelError, TryAgainLater
from .lock import netns_lock, require_lock
from .presence import UPSTREAM_TABLE

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from .ipt.backend import IptBackend
    from .nft.wire import NetfilterSocket, Op
    from .plan import Owner

__all__ = ["UPSTREAM_CHAINS", "UPSTREAM_TABLE", "cleanup_upstream"]

#: Upstream nftables table (one per family ``ip``/``ip6``) and the chains holding
#: per-container rules (§4.2; ``hostip_hostports`` is pre-v1.9.0 but still cleaned).
UPSTREAM_CHAINS = ("hostports", "hostip_hostports", "masquerading")
_RETRY = {errno.ERESTART, errno.ENOENT, errno.EBUSY, errno.EINTR, errno.EAGAIN}
_ATTEMPTS = 10


def _nft_cleanup(sock: NetfilterSocket, owner: Owner, families: Iterable[int]) -> int:
    from .nft import wire as N

    # Rules go by handle (never reused within a table): a rule that vanished since
    # the dump makes the batch fail with ENOENT and we dump again.  No generation-id
    # guard: other programs' commits elsewhere would make it fail spuriously.
    for attempt in range(_ATTEMPTS):
        ops: list[Op] = []
        for fam in families:
            for chain in UPSTREAM_CHAINS:
                for r in sock.dump_rules(N.FAMILY[fam], UPSTREAM_TABLE, chain) or ():
                    if r.comment == owner.container_id:
                        from .nft.netlink import del_rule  # pyroute2: only when there is work
                        ops.append(del_rule(N.FAMILY[fam], UPSTREAM_TABLE, chain, r.handle))
        if not ops:
            return 0
        require_lock("an nftables change")
        try:
            sock.commit(ops)
            return len(ops)
        except N.NftError as e:
            code = e.errors[0][1]
            if code not in _RETRY:
                raise KernelError(f"error deleting upstream nftables rules: {e}") from e
            import random
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
    raise TryAgainLater(f"error deleting upstream nftables rules: ruleset kept changing ({_ATTEMPTS} attempts)")


def _ipt_may_hold(sock: NetfilterSocket | None, fam: int, names: Iterable[str]) -> bool:
    """Cheap pre-check (no exec): one of the chains ``names`` exists in iptables-nft's
    ``nat`` table, or a legacy ``nat`` table exists (then only ``iptables-save`` can tell)."""
    from .presence import legacy_nat_present
    if legacy_nat_present(fam):
        return True
    if sock is None:
        return True
    from .nft import wire as N
    try:
        return any(sock.chains_exist([(N.FAMILY[fam], "nat", n) for n in names]))
    except OSError:
        return True


def cleanup_upstream(owner: Owner, families: Iterable[int] = (4, 6), *, iptables: bool = True,
                     ipt: IptBackend | None = None, sock: NetfilterSocket | None = None) -> int:
    """Remove the upstream plugin's state for ``owner``; returns the number of removals
    (nft rules deleted + iptables restore lines applied).

    ``owner``: :class:`nlportmap.plan.Owner` (``container_id`` and ``network`` are
    used; ifname is not part of upstream identities).  ``families``: subset of
    (4, 6).  ``iptables``: also clean the iptables layout (pass False when
    nlportmap's own backend is iptables: its unforward already removed the same
    chains).  ``ipt``: an :class:`~nlportmap.ipt.backend.IptBackend` to use
    (tests pick a flavour); default one otherwise.  ``sock``: an open
    :class:`~nlportmap.nft.netlink.NetfilterSocket` to reuse (not closed here).

    Never fails for missing state or unusable tools.  Raises
    :class:`~nlportmap.errors.KernelError` if the kernel or iptables-restore
    refuses a removal, :class:`~nlportmap.errors.TryAgainLater` if the nftables
    ruleset kept changing.
    """
    families = tuple(f for f in (4, 6) if f in families)
    total = 0
    own = sock is None
    if own:
        try:
            from .nft.wire import NetfilterSocket
            sock = NetfilterSocket()
            sock.genid()
        except (OSError, ImportError):
            if sock is not None:
                sock.close()
            sock = None
    try:
        with netns_lock():
            if sock is not None:
                total += _nft_cleanup(sock, owner, families)
            if iptables:
                from .ipt.names import dn_chain, sn_chain
                dn = dn_chain(owner.network, owner.container_id)
                sn = sn_chain(owner.network, owner.container_id)
                for fam in families:
                    if not _ipt_may_hold(sock, fam, (dn, sn)):
                        continue
                    if ipt is None:
                        from .ipt.backend import IptBackend
                        ipt = IptBackend()
                    b = ipt
                    what = f"could not teardown upstream {'ipv4' if fam == 4 else 'ipv6'} dnat"
                    total += b.teardown_chains(fam, [dn, sn], what)
    finally:
        if own and sock is not None:
            sock.close()
    return total

