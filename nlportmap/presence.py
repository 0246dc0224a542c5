"""Does an attachment own anything in the kernel?  Lookups by name, never a dump.

containerd sends every pod's DEL twice; the second one (``CNI_NETNS`` empty, no
prevResult) finds nothing, and busy nodes send many DELs for containers that own
nothing.  Such a DEL must cost next to nothing: no ruleset dump, no iptables tool,
no transaction.  :func:`owns_nothing` answers it with one netlink round trip of
single-object lookups on one socket:

* nlportmap's nftables state: slot 0 of the owner's manifest in ``owned`` (an ADD
  writes it in the same batch as the mappings) and, for state without a manifest,
  the forward and claim keys of this config's mappings (both families), each under the
  owner's hash and its legacy hash (state of older releases,
  :class:`nlportmap.plan.Owner`); a ``nlportmap`` table that is not ours
  (:func:`nlportmap.nft.layout.foreign_table`) holds nothing of ours;
* upstream portmap's nftables state: the ``cni_hostport`` table (per family);
* upstream's (and our iptables backend's) per-container chains
  ``CNI-DN-<hash>``/``CNI-SN-<hash>`` in iptables-nft's ``nat`` table.

It may only ever save work, never skip a clean-up: whatever it cannot rule out
(a legacy x_tables ``nat`` table, which netlink cannot see; an upstream
``cni_hostport`` table, whose rules are matched by comment; any lookup error)
counts as "may own something".  Standard library only (cold path).
"""
from __future__ import annotations

import errno
import struct

from .ipt.names import dn_chain, sn_chain
from .nft import layout as L
from .nft import wire as W

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan

__all__ = ["UPSTREAM_TABLE", "legacy_nat_present", "owns_nothing"]

#: upstream portmap's nftables table (one per family; reference portmap-behaviour.md §4.2)
UPSTREAM_TABLE = "cni_hostport"


def legacy_nat_present(fam: int) -> bool:
    """Does this netns have an x_tables (legacy) ``nat`` table for family ``fam``?
    (``/proc/thread-self/net``: correct in a thread that setns()ed.)"""
    name = "ip_tables_names" if fam == 4 else "ip6_tables_names"
    try:
        with open(f"/proc/thread-self/net/{name}", "rb") as f:
            return b"nat" in f.read().split()
    except OSError:
        return False


def _get(family: int, mtype: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("!BBH", family, 0, 0) + attrs
    return W._header(len(body), mtype, W.NLM_F_REQUEST, seq) + body


def owns_nothing(sock: W.NetfilterSocket, plan: Plan) -> bool:
    """True only if ``plan.owner`` (its tag, network and container ID) certainly owns no
    nftables element of ours, no upstream nftables rule and no ``CNI-DN``/``CNI-SN``
    chain in this netns.  ``plan.host_keys`` are the config's mappings (both families)."""
    if legacy_nat_present(4) or legacy_nat_present(6):
        return False
    me = plan.owner
    hashes = (me.hash, me.legacy_hash)
    reqs: list[bytes] = []
    seqs: list[int] = []
    ours: dict[int, int] = {}  # seq of a lookup in our table -> its family

    def ask(family: int, mtype: int, attrs: bytes, fam: int = 0) -> None:
        seq = sock.next_seq()
        reqs.append(_get(family, mtype, attrs, seq))
        seqs.append(seq)
        if fam:
            ours[seq] = fam

    table = W._nlstr(1, L.TABLE)
    mine: dict[int, int] = {}  # family -> seq of the GETTABLE of our table
    for fam in (4, 6):
        f = W.FAMILY[fam]
        mine[fam] = sock.next_seq()
        reqs.append(W.table_get(f, L.TABLE, mine[fam]))
        seqs.append(mine[fam])
        for h in hashes:
            ask(f, W.GETSETELEM, table + W._nlstr(2, L.OWNED) + W.nla(3, W._elem(L.record_key(h, 0), None, None)), fam)
        ask(f, W.GETTABLE, W._nlstr(1, UPSTREAM_TABLE))
        for chain in (dn_chain(plan.owner.network, plan.owner.container_id),
                      sn_chain(plan.owner.network, plan.owner.container_id)):
            ask(f, W.GETCHAIN, W._nlstr(1, "nat") + W._nlstr(3, chain))
    for fam, proto, hip, port in plan.host_keys:
        s, k = L.forward_key(fam, proto, hip, port)
        ask(W.FAMILY[fam], W.GETSETELEM, table + W._nlstr(2, s) + W.nla(3, W._elem(k, None, None)), fam)
        for h in hashes:
            ask(W.FAMILY[fam], W.GETSETELEM, table + W._nlstr(2, L.CLAIMS)
                + W.nla(3, W._elem(L.claim_key(proto, hip, port, h), None, None)), fam)
    try:
        res = sock.request(reqs, seqs)
    except OSError:
        return False
    foreign = set()
    for fam, seq in mine.items():
        r = res[seq]
        if isinstance(r, int):
            if r != errno.ENOENT:
                return False
            foreign.add(fam)  # no table: nothing of ours (its lookups answer ENOENT anyway)
        elif L.foreign_table(W.TableInfo.parse(r[0])):
            foreign.add(fam)  # not our table: its sets hold nothing of ours, whatever they answer
    tables = set(mine.values())
    for seq in seqs:
        if seq in tables or ours.get(seq) in foreign:
            continue
        r = res[seq]
        if isinstance(r, int):
            if r != errno.ENOENT:
                return False  # cannot tell
            continue
        # found something: ours only if it is an element whose comment names this owner
        for raw in r:
            if (raw[4] | raw[5] << 8) & 0xFF != W.NEWSETELEM:
                return False  # a table or chain that may hold our state
            if any(e.comment is None or me.owns(e.comment) for e in W.parse_elems(raw)):
                return False
    return True
