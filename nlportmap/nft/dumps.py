"""The nftables backend's whole-table reads: removal by owner predicate (GC, and DEL
without a manifest), GC's predicate, and ``list``.  O(n) in the mappings of the node,
so only the rare paths use them.
"""
from __future__ import annotations

from ..plan import Listed, Owner
from . import layout as L
from . import owned as O
from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from .owned import Doomed, ElemOps
    from .wire import NetfilterSocket, Op


def remove_where_ops(sock: NetfilterSocket, doomed: Doomed, families: Iterable[int],
                     found: list[tuple[int, str, int, str]]) -> list[Op]:
    """The ops deleting every element (of ``families``) whose comment satisfies ``doomed``,
    promoting surviving claims; ``found`` gets ``(family, proto, host port, pod IP)`` of
    each forward deleted."""
    dels: ElemOps = {}
    adds: ElemOps = {}
    freed: dict[int, list[tuple[str, bytes]]] = {4: [], 6: []}
    for fam in families:
        for s in L.SETS:
            for e in sock.dump_elems(N.FAMILY[fam], L.TABLE, s) or ():
                if doomed(e.comment):
                    dels.setdefault((fam, s), []).append((e.full_key, None, None))
                    if s in (L.HOSTPORTS, L.HOSTIP_HOSTPORTS):
                        freed[fam].append((s, e.key))
                        if e.data:
                            proto, _, port = L.parse_forward_key(fam, s, e.key)
                            found.append((fam, proto, port, L.parse_forward_data(fam, e.data)[0]))
    O.promotions(sock, freed, doomed, dels, adds)
    return O.elem_ops(dels, adds)


def gc_doomed(valid_tags: set[str], network: str | None, start: int) -> Doomed:
    """GC's predicate: does a comment name an owner of ``network`` (any if None) that is
    not in ``valid_tags`` and was created before ``start``?  (See ``NftBackend.gc``.)"""
    valid: set[str] = set()
    for t in valid_tags:
        o = Owner.from_tag(t, network or "")
        if o is not None:
            valid |= {o.comment, o.legacy_comment}

    def doomed(comment: str | None) -> bool:
        o = Owner.parse(comment)
        if o is None:
            return False
        if network is None:
            if o.tag in valid_tags:
                return False
        else:
            # of this network?  (rebuilt through the same format, cut and hash included)
            if not Owner(o.container_id, o.ifname, network).owns(comment) or Owner.base(comment) in valid:
                return False
        created = Owner.created_ms(comment)
        return created is None or created < start

    return doomed


def list_forwards(sock: NetfilterSocket, fams: tuple[int, ...], backend: str) -> list[Listed]:
    """Every forward in ``fams``, active ones first, then shadowed claims (dumps the maps)."""
    out: list[Listed] = []
    for fam in fams:
        for s in (L.HOSTIP_HOSTPORTS, L.HOSTPORTS):
            for e in sock.dump_elems(N.FAMILY[fam], L.TABLE, s) or ():
                proto, hip, hport = L.parse_forward_key(fam, s, e.key)
                cip, cport = L.parse_forward_data(fam, e.data or b"")
                out.append(Listed(Owner.parse(e.comment), fam, proto, hip, hport, cip, cport, backend))
    for fam in fams:
        for e in sock.dump_elems(N.FAMILY[fam], L.TABLE, L.CLAIMS) or ():
            proto, hip, hport = L.parse_claim_key(fam, e.key)
            cip, cport = L.parse_forward_data(fam, L.live_data_from_claim(fam, e.data or bytes(20)))
            out.append(Listed(Owner.parse(e.comment), fam, proto, hip, hport, cip, cport, backend,
                              state="shadowed"))
    return out
