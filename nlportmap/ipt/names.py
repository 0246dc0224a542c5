"""Upstream's per-container iptables chain names (reference portmap-behaviour.md §3.3).

Standard library only and cheap to import: a DEL on the nftables backend computes
these names to find (by a single netlink lookup) what the upstream plugin may have
left, without loading the iptables backend.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from hashlib import sha512 as _sha512  # typeshed has no stub for _sha512
else:
    try:  # the C module directly: 'hashlib' costs ~1.7 ms of a cold start
        from _sha512 import sha512 as _sha512
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha512 as _sha512

__all__ = ["DN_PREFIX", "MAX_CHAIN_NAME", "SN_PREFIX", "chain_name", "dn_chain", "sn_chain"]

DN_PREFIX = "CNI-DN-"
SN_PREFIX = "CNI-SN-"
#: iptables chain names are cut to 28 characters (§3.3).
MAX_CHAIN_NAME = 28


def chain_name(prefix: str, network: str, container_id: str) -> str:
    """``prefix`` + lower-case hex SHA-512 of ``network + container_id`` (UTF-8, no
    separator), cut to 28 characters (§3.3).  CNI_IFNAME is not part of it."""
    h = _sha512((network + container_id).encode()).hexdigest()
    return (prefix + h)[:MAX_CHAIN_NAME]


def dn_chain(network: str, container_id: str) -> str:
    """The per-container DNAT chain, e.g. ``mynet``+``c1`` -> ``CNI-DN-f0bca4ac77cde1bf2f3da`` (§3.3)."""
    return chain_name(DN_PREFIX, network, container_id)


def sn_chain(network: str, container_id: str) -> str:
    """The legacy per-container SNAT chain ``CNI-SN-<same 21 hex>`` (§3.3; DEL only)."""
    return chain_name(SN_PREFIX, network, container_id)
