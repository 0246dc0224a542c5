"""DEL's clean-ups beyond the chosen backend, each guarded: a failure is reported on
stderr and never fails DEL (a failing DEL wedges teardown).  Used by
:meth:`nlportmap.plugin.Plugin.delete`; what they need is imported on first use.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from .backends import Backend
    from .plan import Plan

    #: (family, proto, host port, pod IP): a forward whose UDP/SCTP flows DEL deletes
    Flow = tuple[int, str, int, str]


def cleanup_nftables(plan: Plan, removed: list[Flow] | None = None) -> None:
    """DEL through iptables also removes this attachment's nftables state: the
    network's backend may have changed since its ADD (an operator added
    ``backend`` or ``externalSetMarkChain`` to a live conflist).  The other
    direction is covered by the upstream clean-up (same ``CNI-DN-`` chains).
    Guarded like the upstream clean-up: never fails DEL."""
    try:
        from .nft.backend import NftBackend
        b = NftBackend()
        try:
            if b.usable() is None:
                b.unforward(plan, removed=removed)
        finally:
            b.close()
    except Exception as e:
        sys.stderr.write(f"nlportmap: warning: could not remove nftables state: {e}\n")


def cleanup_upstream(plan: Plan, backend: Backend) -> None:
    """Migration: remove what the upstream Go portmap left for this container
    (:func:`nlportmap.migrate.cleanup_upstream`).  Guarded: a failure is
    reported on stderr and never fails DEL (a failing DEL wedges teardown).
    ``NLPORTMAP_UPSTREAM_CLEANUP=0`` turns it off."""
    try:
        from .migrate import cleanup_upstream
        name = getattr(backend, "name", "")
        cleanup_upstream(plan.owner, iptables=name != "iptables",
                         sock=getattr(backend, "sock", None) if name == "nftables" else None)
    except Exception as e:
        sys.stderr.write(f"nlportmap: warning: could not remove upstream portmap state: {e}\n")
