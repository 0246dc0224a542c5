"""The nftables skeleton check: is the table ours, is every static rule present and current?

Used by :class:`~nlportmap.nft.backend.NftBackend` (ADD repairs what this finds; CHECK
reports it).  Reads only: the skeleton itself is built by :func:`nlportmap.nft.layout.skeleton`.
"""
from __future__ import annotations

from ..errors import KernelError
from . import layout as L
from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

    from ..plan import Plan
    from .wire import NetfilterSocket, TableInfo


def our_families(sock: NetfilterSocket) -> tuple[int, ...]:
    """The families whose ``nlportmap`` table exists and is ours (one GETTABLE round
    trip): DEL, GC and ``list`` never read or change a foreign table of that name."""
    infos = sock.tables([(N.FAMILY[fam], L.TABLE) for fam in (4, 6)])
    return tuple(fam for fam, info in zip((4, 6), infos, strict=True)
                 if info is not None and not L.foreign_table(info))


def skeleton_ok(sock: NetfilterSocket, fams: Iterable[int], plan: Plan, repair: bool) -> dict[int, bool]:
    """Per family: is every static rule present with the current fingerprint (layout
    version + conditions)?  One GETTABLE and one rule dump per family, in one write
    (never of elements), so a damaged or outdated skeleton is rewritten by the next ADD.
    A missing set is found by the batch itself (ENOENT) and repaired on the retry; CHECK
    also dumps the sets.  ``repair``: the last batch found an object of ours gone, so
    every family is rewritten.  Raises :class:`KernelError` for a table of that name that
    is not ours (:func:`~nlportmap.nft.layout.foreign_table`): nlportmap never modifies it."""
    if repair:
        infos = sock.tables([(N.FAMILY[fam], L.TABLE) for fam in fams])
        for fam, info in zip(fams, infos, strict=True):
            refuse_foreign(fam, info)
        return {fam: False for fam in fams}
    return {fam: not skeleton_problems(sock, fam, plan, sets=False, refuse=True) for fam in fams}


def refuse_foreign(fam: int, info: TableInfo | None) -> None:
    why = L.foreign_table(info)
    if why:
        raise KernelError(f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE} exists but is not nlportmap's "
                          f"({why}); nlportmap never modifies a table it did not create: "
                          "rename or delete that table", details=why)


def skeleton_problems(sock: NetfilterSocket, fam: int, plan: Plan, sets: bool = True,
                      refuse: bool = False) -> list[str]:
    """What is wrong with family ``fam``'s skeleton ([] if nothing); ``sets``: also dump
    the set names; ``refuse``: raise for a foreign table instead of reporting it."""
    where = f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE}"
    inv = sock.table_inventory(N.FAMILY[fam], L.TABLE, sets=sets)
    if inv is None:
        return [f"{where} missing"]
    chains, set_names, info = inv
    if refuse:
        refuse_foreign(fam, info)
    elif L.foreign_table(info):
        return [f"{where} is not nlportmap's ({L.foreign_table(info)})"]
    conds = plan.conditions.get(fam)
    fp = L.fingerprint(fam, conds)
    out = [f"{where}: set {s} missing" for s in L.ALL_SETS
           if set_names is not None and s not in set_names]
    for chain, n in L.expected_rules(fam, conds).items():
        got = chains.get(chain, [])
        if len(got) != n or any(c != fp for c in got):
            out.append(f"{where}: chain {chain} has {len(got)} of {n} rules"
                       + ("" if len(got) != n else " (stale)"))
    if info.dormant:  # last: ADD rewrites the skeleton, whose NEWTABLE clears the flag
        out.append(f"{where} is dormant (flags dormant): it forwards nothing")
    return out
