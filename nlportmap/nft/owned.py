"""The per-owner elements of the nftables backend: what a plan needs, the owner's
manifest, and the ops that release an owner's elements or promote a displaced claim.

Functions of a :class:`~nlportmap.nft.wire.NetfilterSocket` (reads only) and of plain
data; the batch itself is committed by :class:`~nlportmap.nft.backend.NftBackend`.
"""
from __future__ import annotations

from ..errors import InvalidConfig
from ..plan import Owner
from . import layout as L
from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import TypeAlias, TypeVar

    from ..plan import Plan
    from .wire import ElemItem, Key, NetfilterSocket, Op

    _T = TypeVar("_T")
    #: (family, set, key, data, label): an element a plan needs
    Wanted: TypeAlias = tuple[int, str, Key, "bytes | None", str]
    #: (proto, host IP, host port): a forward's key fields
    HostKey: TypeAlias = tuple[str, "str | None", int]
    #: (owner hash, family): a manifest to read
    Head: TypeAlias = tuple[bytes, int]
    #: (proto, host IP, host port, pod IP): one manifest record
    Record: TypeAlias = tuple[str, "str | None", int, str]
    #: {family: [(record key, record)]}
    Manifest: TypeAlias = dict[int, list[tuple[bytes, Record]]]
    #: {(family, set): elements}: what a batch deletes or adds
    ElemOps: TypeAlias = dict[tuple[int, str], list[ElemItem]]
    #: does a stored comment name an owner whose elements go?
    Doomed: TypeAlias = Callable[["str | None"], bool]

ELEMS_PER_MSG = 200  # keeps one NLA list well under 64 KiB
MANIFEST_BATCH = 4


def chunks(items: Sequence[_T], n: int = ELEMS_PER_MSG) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def wanted(plan: Plan) -> list[Wanted]:
    """[(family, set, key, data, label)] for every element the plan needs."""
    out: list[Wanted] = []
    for f in plan.forwards:
        s, k = L.forward_key(f.family, f.proto, f.host_ip, f.host_port)
        out.append((f.family, s, k, L.forward_data(f.container_ip, f.container_port), f"DNAT {f}"))
    for m in plan.masqs:
        ms, mk = L.masq_key(m.saddr, m.daddr)  # mk: a range in masq_nets
        out.append((m.family, ms, mk, None, str(m)))
    return out


def elem_ops(dels: ElemOps, adds: ElemOps) -> list[Op]:
    """The batch ops that delete ``dels`` and then add ``adds`` (chunked per message)."""
    ops: list[Op] = []
    for (fam, s), items in dels.items():
        for ch in chunks(items):
            ops.append(N.set_elems(False, N.FAMILY[fam], L.TABLE, s, ch))
    for (fam, s), items in adds.items():
        for ch in chunks(items):
            ops.append(N.set_elems(True, N.FAMILY[fam], L.TABLE, s, ch))
    return ops


# ------------------------------------------------------------ manifest
def manifest_heads(owner: Owner, fams: Iterable[int] = (4, 6)) -> list[Head]:
    """The manifests to read: (owner hash, family), the current format's and the
    older format's (:attr:`Owner.legacy_hash`), so state of older releases is found."""
    return [(h, fam) for h in (owner.hash, owner.legacy_hash) for fam in fams]


def manifest_queries(heads: list[Head], first: int = 0, n: int = MANIFEST_BATCH
                     ) -> list[tuple[int, str, str, Key]]:
    return [(N.FAMILY[fam], L.TABLE, L.OWNED, L.record_key(h, first + i))
            for h, fam in heads for i in range(n)]


def read_manifest(sock: NetfilterSocket, owner: Owner, got: list[N.Elem | None] | None = None,
                  fams: Iterable[int] = (4, 6)) -> Manifest:
    """``{fam: [(record key, (proto, host_ip, port, pod_ip)), ...]}``: what ``owner``
    recorded in ``owned`` (contiguous slots from 0 under its hash and its legacy hash,
    read in batches of single gets; records whose comment names another owner are
    skipped: older releases shared one legacy hash between networks).  ``got``: the
    answers to ``manifest_queries(manifest_heads(owner))`` when the caller sent them
    with its own gets."""
    out: Manifest = {4: [], 6: []}
    heads, first, n = manifest_heads(owner, fams), 0, MANIFEST_BATCH
    while heads:
        if got is None:
            got = sock.get_elems(manifest_queries(heads, first, n))
        more: list[Head] = []
        for j, (h, fam) in enumerate(heads):
            for i, e in enumerate(got[j * n:(j + 1) * n]):
                if e is None or not e.data:
                    break
                if owner.owns(e.comment):
                    out[fam].append((L.record_key(h, first + i), L.parse_record(fam, e.data)))
            else:
                more.append((h, fam))
        # a long manifest is read in growing batches: ~log(slots) round trips
        heads, first, got, n = more, first + n, None, min(4 * n, 1024)
    return out


def write_manifest(me: Owner, comment: str, old: Manifest, records: dict[int, list[Record]],
                   dels: ElemOps, adds: ElemOps) -> None:
    """Make ``me``'s manifest ``records`` (rewritten under the current hash; a manifest
    under the legacy hash is removed: ADD migrates older state)."""
    for fam in (4, 6):
        keys = [L.record_key(me.hash, slot) for slot in range(len(records[fam]))]
        if [r for _, r in old[fam]] == records[fam] and [k for k, _ in old[fam]] == keys:
            continue
        for key, _ in old[fam]:
            dels.setdefault((fam, L.OWNED), []).append((key, None, None))
        for key, r in zip(keys, records[fam], strict=True):
            adds.setdefault((fam, L.OWNED), []).append((key, L.record_data(*r), comment))


# ------------------------------------------------------------ release / promote
def promotions(sock: NetfilterSocket, freed: dict[int, list[tuple[str, bytes]]], doomed: Doomed,
               dels: ElemOps, adds: ElemOps) -> None:
    """For live keys being freed, promote one surviving shadowed claim (dumps ``claims``:
    its size is the number of conflicts on the node, not of mappings)."""
    for fam, keys in freed.items():
        if not keys:
            continue
        claims = sock.dump_elems(N.FAMILY[fam], L.TABLE, L.CLAIMS) or []
        by_prefix: dict[bytes, list[N.Elem]] = {}
        for c in claims:
            by_prefix.setdefault(c.key[:24], []).append(c)
        for s, k in keys:
            proto, hip, port = L.parse_forward_key(fam, s, k)
            alive = [c for c in by_prefix.get(L.claim_prefix(proto, hip, port), [])
                     if c.data and not doomed(c.comment)]
            if not alive:
                continue
            # the newest surviving claim wins, so "newest live ADD owns the port" holds
            c = max(alive, key=lambda c: Owner.created_ms(c.comment) or 0)
            dels.setdefault((fam, L.CLAIMS), []).append((c.key, None, None))
            adds.setdefault((fam, s), []).append((k, L.live_data_from_claim(fam, c.data or b""), c.comment))
            by_prefix[c.key[:24]].remove(c)


def release(sock: NetfilterSocket, owner: Owner, keys: dict[int, set[HostKey]], pod_ips: dict[int, set[str]],
            dels: ElemOps, adds: ElemOps, removed: list[tuple[int, str, int, str]] | None = None) -> None:
    """Queue the removal of ``owner``'s live forwards on ``keys`` ({fam: {(proto, host_ip, port)}}),
    its shadowed claims on them (under its hash and its legacy hash), and its masquerade
    elements for ``pod_ips``; a freed port goes to the newest surviving displaced claim.
    Elements owned by others are kept.  ``removed`` gets ``(family, proto, host port, pod
    IP)`` of each forward queued."""
    q: list[tuple[int, str, bytes]] = []
    for fam, ks in keys.items():
        for proto, hip, port in sorted(ks, key=str):
            s, k = L.forward_key(fam, proto, hip, port)
            q.append((fam, s, k))
            q.append((fam, L.CLAIMS, L.claim_key(proto, hip, port, owner.hash)))
            q.append((fam, L.CLAIMS, L.claim_key(proto, hip, port, owner.legacy_hash)))
    have = sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k in q])
    freed: dict[int, list[tuple[str, bytes]]] = {4: [], 6: []}
    ips = {f: set(v) for f, v in pod_ips.items()}
    for (fam, s, k), cur in zip(q, have, strict=True):
        if cur is None or not owner.owns(cur.comment):
            continue
        dels.setdefault((fam, s), []).append((cur.full_key, None, None))
        if s != L.CLAIMS:
            freed[fam].append((s, k))
        if cur.data:  # the pod's IP, for its masquerade elements (no prevResult needed)
            live = L.live_data_from_claim(fam, cur.data) if s == L.CLAIMS else cur.data
            pod = L.parse_forward_data(fam, live)[0]
            ips.setdefault(fam, set()).add(pod)
            if removed is not None:  # its conntrack entries go after the commit (DEL)
                proto, _, port = L.parse_claim_key(fam, k) if s == L.CLAIMS else L.parse_forward_key(fam, s, k)
                removed.append((fam, proto, port, pod))
    mq: list[tuple[int, str, Key]] = []
    for fam, fips in ips.items():
        for ip in sorted(fips):
            # masq_nets: a point inside the pod's own range finds it whatever its prefix;
            # masq_pairs' "pod . pod": written by layout <= 3
            cands: list[tuple[str, Key]] = [(L.MASQ_NETS, L.masq_net_point(ip)), L.masq_key(ip, ip),
                                            L.masq_key(None, ip)]
            if fam == 4:
                cands.append(L.masq_key("127.0.0.1", ip))
            mq += [(fam, ms, mk) for ms, mk in cands]
    for (fam, s, _), cur in zip(mq, sock.get_elems([(N.FAMILY[f], L.TABLE, ms, mk) for f, ms, mk in mq]),
                                strict=True):
        if cur is not None and owner.owns(cur.comment):
            dels.setdefault((fam, s), []).append((cur.full_key, None, None))
    promotions(sock, freed, owner.owns, dels, adds)


# ------------------------------------------------------------ ADD
class ConflictError(InvalidConfig):
    """conflictPolicy=reject and a host port is already owned by someone else."""


class AddBatch:
    """The element ops of one ADD of ``plan``: what the plan needs, the displaced owners'
    claims, the owner's stale elements (from its manifest) and its new manifest.
    :meth:`ops` reads (one round trip of gets); a retried batch calls it again."""

    def __init__(self, plan: Plan, conflict_policy: str, now_ms: int) -> None:
        self.wanted = wanted(plan)
        me = self.me = plan.owner
        self.base = me.comment
        self.comment = me.stamped(now_ms)
        self.policy = conflict_policy
        self.my_claims = [(f.family, L.claim_key(f.proto, f.host_ip, f.host_port, h))
                          for f in plan.forwards for h in (me.hash, me.legacy_hash)]
        self.records: dict[int, list[Record]] = {
            fam: [(f.proto, f.host_ip, f.host_port, f.container_ip) for f in plan.forwards if f.family == fam]
            for fam in (4, 6)}
        self.net_points = [(m.family, L.masq_net_point(m.daddr)) for m in plan.masqs if m.saddr and "/" in m.saddr]

    def ops(self, sock: NetfilterSocket) -> list[Op]:
        """Raises :class:`ConflictError` (policy ``reject``)."""
        wanted, my_claims, net_points = self.wanted, self.my_claims, self.net_points
        me, base, comment, records = self.me, self.base, self.comment, self.records
        q: list[tuple[int, str, str, Key]] = [(N.FAMILY[f], L.TABLE, s, k) for f, s, k, _, _ in wanted]
        q += [(N.FAMILY[f], L.TABLE, L.CLAIMS, k) for f, k in my_claims]
        # the element of masq_nets that holds the pod's own point, whatever its prefix: a
        # re-ADD with another prefix replaces it (intervals may overlap; one per pod)
        q += [(N.FAMILY[f], L.TABLE, L.MASQ_NETS, p) for f, p in net_points]
        q += manifest_queries(manifest_heads(me))  # one round trip for all of ADD's reads
        got = sock.get_elems(q)
        n1, n2 = len(wanted), len(wanted) + len(my_claims)
        n3 = n2 + len(net_points)
        have, claims_have, points_have, manifest_got = got[:n1], got[n1:n2], got[n2:n3], got[n3:]
        dels: ElemOps = {}
        adds: ElemOps = {}
        for (fam, s, k, d, label), cur in zip(wanted, have, strict=True):
            if cur is not None:
                mine = me.owns(cur.comment)
                if mine and cur.data == d and cur.full_key == k and Owner.base(cur.comment) == base:
                    continue  # identical: nothing to do (keeps its creation stamp)
                if not mine:
                    if self.policy == "reject":
                        raise ConflictError(
                            f"host port already in use: {label} is owned by {cur.comment or 'unknown'}",
                            details=cur.comment or "")
                    displaced = Owner.hash_of(cur.comment)
                    # isinstance: a forward's key is bytes (only masquerade keys are ranges)
                    if s in (L.HOSTPORTS, L.HOSTIP_HOSTPORTS) and displaced and cur.data \
                            and isinstance(k, bytes):
                        proto, hip, port = L.parse_forward_key(fam, s, k)
                        adds.setdefault((fam, L.CLAIMS), []).append(
                            (L.claim_key(proto, hip, port, displaced),
                             L.claim_data_from_live(fam, cur.data), cur.comment))
                dels.setdefault((fam, s), []).append((cur.full_key, None, None))
            adds.setdefault((fam, s), []).append((k, d, comment))
        wanted_nets = {(f, k) for f, s, k, _, _ in wanted if s == L.MASQ_NETS}
        for (fam, _), cur in zip(net_points, points_have, strict=True):
            gone = dels.setdefault((fam, L.MASQ_NETS), [])
            if (cur is not None and me.owns(cur.comment) and (fam, cur.full_key) not in wanted_nets
                    and (cur.full_key, None, None) not in gone):
                gone.append((cur.full_key, None, None))
        for (fam, k), cur in zip(my_claims, claims_have, strict=True):
            if cur is not None and me.owns(cur.comment):  # we were shadowed; now we own the port again
                dels.setdefault((fam, L.CLAIMS), []).append((k, None, None))
        # what a previous ADD of this owner installed and this plan no longer has
        old = read_manifest(sock, me, manifest_got)
        stale_keys: dict[int, set[HostKey]] = {4: set(), 6: set()}
        stale_ips: dict[int, set[str]] = {4: set(), 6: set()}
        for fam in (4, 6):
            new_keys = {r[:3] for r in records[fam]}
            new_ips = {r[3] for r in records[fam]}
            for _key, rec in old[fam]:
                if rec[:3] not in new_keys:
                    stale_keys[fam].add(rec[:3])
                if rec[3] not in new_ips:
                    stale_ips[fam].add(rec[3])
        if any(stale_keys.values()) or any(stale_ips.values()):
            release(sock, me, stale_keys, stale_ips, dels, adds)
        write_manifest(me, comment, old, records, dels, adds)
        return elem_ops(dels, adds)
