"""The nftables backend: apply, verify and remove a :class:`~nlportmap.plan.Plan`.

Each of ADD (:meth:`NftBackend.forward`), DEL (:meth:`NftBackend.unforward`)
and GC is *read the owner comments of the keys involved, then one atomic
batch*, under the netns lock (:mod:`nlportmap.lock`), retried with jittered
backoff when the batch no longer matches what was read (see :meth:`_transact`).
ADD and DEL read only their own keys (single-element gets), so their cost does
not depend on how many mappings the node holds.

Conflicts: a host port claimed by another owner is taken over by the newest
ADD (``conflictPolicy: replace``, the default; the displaced claim is kept in
the ``claims`` map) or refused naming the current owner (``reject``).  DEL
deletes an element only if its comment names this owner, so deleting the
displaced container leaves the new owner intact, and deleting the new owner
gives the port back to the newest surviving displaced claim.
"""
from __future__ import annotations

import errno
import time

from ..errors import InternalError, InvalidConfig, KernelError, TryAgainLater
from ..lock import netns_lock, require_lock
from ..plan import Listed, Owner, Plan
from . import layout as L
from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import TypeAlias, TypeVar

    from .wire import ElemItem, Key, Op, TableInfo

    _T = TypeVar("_T")
    #: (family, set, key, data, label): an element a plan needs
    Wanted: TypeAlias = tuple[int, str, Key, "bytes | None", str]
    #: (proto, host IP, host port): a forward's key fields
    HostKey: TypeAlias = tuple[str, "str | None", int]
    #: (owner hash, family): a manifest to read
    Head: TypeAlias = tuple[bytes, int]
    #: {family: [(record key, (proto, host IP, host port, pod IP))]}
    Manifest: TypeAlias = dict[int, list[tuple[bytes, tuple[str, "str | None", int, str]]]]
    #: {(family, set): elements}: what a batch deletes or adds
    ElemOps: TypeAlias = dict[tuple[int, str], list[ElemItem]]
    #: does a stored comment name an owner whose elements go?
    Doomed: TypeAlias = Callable[["str | None"], bool]

RETRY_ERRNOS = {errno.ERESTART, errno.EBUSY, errno.ENOENT, errno.EEXIST, errno.EINTR, errno.EAGAIN}
MAX_ATTEMPTS = 25
ELEMS_PER_MSG = 200  # keeps one NLA list well under 64 KiB


class ConflictError(InvalidConfig):
    """conflictPolicy=reject and a host port is already owned by someone else."""


def _chunks(items: Sequence[_T], n: int = ELEMS_PER_MSG) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class NftBackend:
    """nftables over netlink.  ``sock`` may be injected (tests open it in another netns)."""

    name = "nftables"
    #: GC spares elements whose creation stamp is at or after its start (started_ms)
    gc_spares_new = True

    def __init__(self, sock: N.NetfilterSocket | None = None) -> None:
        self._sock = sock

    @property
    def sock(self) -> N.NetfilterSocket:
        if self._sock is None:
            self._sock = N.NetfilterSocket()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------ machinery
    def _transact(self, build: Callable[[], list[Op]], what: str) -> int:
        """Run ``build() -> ops`` (reads, then the batch) and commit, under the netns lock.

        No generation-id guard: the lock serialises every nlportmap writer of
        this netns, and other programs bump the netns-wide generation for
        their own tables (kube-proxy, firewalld...) -- a genid guard turns their
        activity into our spurious failures (tests/integration/test_churn.py).
        Our batches validate themselves instead: deleting a key that vanished
        (ENOENT) or adding one that reappeared with other data (EEXIST/EBUSY)
        aborts the whole batch, and we read again and retry.
        """
        with netns_lock():
            for attempt in range(MAX_ATTEMPTS):
                ops = build()
                if not ops:
                    return 0
                require_lock("an nftables change")  # inside an unlockable netns_lock: refuse (nlportmap.lock)
                try:
                    self.sock.commit(ops)
                    self._repair = False
                    return len(ops)
                except N.NftError as e:
                    code = e.errors[0][1]
                    if code == errno.ENOENT:
                        self._repair = True  # an object of ours is gone: rewrite the skeleton next time
                    if code in RETRY_ERRNOS and attempt + 1 < MAX_ATTEMPTS:
                        import random
                        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                        continue
                    if code in RETRY_ERRNOS:
                        raise TryAgainLater(f"{what}: nftables kept changing, gave up after {MAX_ATTEMPTS} "
                                            f"attempts: {e}") from e
                    raise KernelError(f"{what}: nftables refused the transaction: {e}") from e
        raise TryAgainLater(f"{what}: gave up")  # pragma: no cover

    _repair = False

    def _our_families(self) -> tuple[int, ...]:
        """The families whose ``nlportmap`` table exists and is ours (one GETTABLE round
        trip): DEL, GC and ``list`` never read or change a foreign table of that name."""
        infos = self.sock.tables([(N.FAMILY[fam], L.TABLE) for fam in (4, 6)])
        return tuple(fam for fam, info in zip((4, 6), infos, strict=True)
                     if info is not None and not L.foreign_table(info))

    def _skeleton_ok(self, fams: Iterable[int], plan: Plan) -> dict[int, bool]:
        """Per family: is every static rule present with the current fingerprint (layout
        version + conditions)?  One GETTABLE and one rule dump per family, in one write
        (never of elements), so a damaged or outdated skeleton is rewritten by the next ADD.
        A missing set is found by the batch itself (ENOENT) and repaired on the retry; CHECK
        also dumps the sets.  Raises :class:`KernelError` for a table of that name that is
        not ours (:func:`~nlportmap.nft.layout.foreign_table`): nlportmap never modifies it."""
        if self._repair:
            infos = self.sock.tables([(N.FAMILY[fam], L.TABLE) for fam in fams])
            for fam, info in zip(fams, infos, strict=True):
                self._refuse_foreign(fam, info)
            return {fam: False for fam in fams}
        return {fam: not self._skeleton_problems(fam, plan, sets=False, refuse_foreign=True) for fam in fams}

    @staticmethod
    def _refuse_foreign(fam: int, info: TableInfo | None) -> None:
        why = L.foreign_table(info)
        if why:
            raise KernelError(f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE} exists but is not nlportmap's "
                              f"({why}); nlportmap never modifies a table it did not create: "
                              "rename or delete that table", details=why)

    def _skeleton_problems(self, fam: int, plan: Plan, sets: bool = True, refuse_foreign: bool = False) -> list[str]:
        where = f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE}"
        inv = self.sock.table_inventory(N.FAMILY[fam], L.TABLE, sets=sets)
        if inv is None:
            return [f"{where} missing"]
        chains, set_names, info = inv
        if refuse_foreign:
            self._refuse_foreign(fam, info)
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

    @staticmethod
    def _wanted(plan: Plan) -> list[Wanted]:
        """[(family, set, key, data, label)] for every element the plan needs."""
        out: list[Wanted] = []
        for f in plan.forwards:
            s, k = L.forward_key(f.family, f.proto, f.host_ip, f.host_port)
            out.append((f.family, s, k, L.forward_data(f.container_ip, f.container_port), f"DNAT {f}"))
        for m in plan.masqs:
            ms, mk = L.masq_key(m.saddr, m.daddr)  # mk: a range in masq_nets
            out.append((m.family, ms, mk, None, str(m)))
        return out

    # ------------------------------------------------------------ manifest
    MANIFEST_BATCH = 4

    @staticmethod
    def _manifest_heads(owner: Owner, fams: Iterable[int] = (4, 6)) -> list[Head]:
        """The manifests to read: (owner hash, family), the current format's and the
        older format's (:attr:`Owner.legacy_hash`), so state of older releases is found."""
        return [(h, fam) for h in (owner.hash, owner.legacy_hash) for fam in fams]

    def _manifest_queries(self, heads: list[Head], first: int = 0, n: int = MANIFEST_BATCH
                          ) -> list[tuple[int, str, str, Key]]:
        return [(N.FAMILY[fam], L.TABLE, L.OWNED, L.record_key(h, first + i))
                for h, fam in heads for i in range(n)]

    def _manifest(self, owner: Owner, got: list[N.Elem | None] | None = None,
                  fams: Iterable[int] = (4, 6)) -> Manifest:
        """``{fam: [(record key, (proto, host_ip, port, pod_ip)), ...]}``: what ``owner``
        recorded in ``owned`` (contiguous slots from 0 under its hash and its legacy hash,
        read in batches of single gets; records whose comment names another owner are
        skipped: older releases shared one legacy hash between networks).  ``got``: the
        answers to ``_manifest_queries(_manifest_heads(owner))`` when the caller sent them
        with its own gets."""
        out: Manifest = {4: [], 6: []}
        heads, first, n = self._manifest_heads(owner, fams), 0, self.MANIFEST_BATCH
        while heads:
            if got is None:
                got = self.sock.get_elems(self._manifest_queries(heads, first, n))
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

    def _release(self, owner: Owner, keys: dict[int, set[HostKey]], pod_ips: dict[int, set[str]],
                 dels: ElemOps, adds: ElemOps,
                 removed: list[tuple[int, str, int, str]] | None = None) -> None:
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
        have = self.sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k in q])
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
        for (fam, s, _), cur in zip(mq, self.sock.get_elems([(N.FAMILY[f], L.TABLE, ms, mk) for f, ms, mk in mq]),
                            strict=True):
            if cur is not None and owner.owns(cur.comment):
                dels.setdefault((fam, s), []).append((cur.full_key, None, None))
        self._promotions(freed, owner.owns, dels, adds)

    # ----------------------------------------------------------------- ADD
    def forward(self, plan: Plan, conflict_policy: str = "replace") -> int:
        """Install ``plan`` in one transaction; returns the number of ops committed.

        A host port owned by another attachment is taken over (``replace``: the
        displaced owner's element is kept as a shadowed claim in ``claims`` and
        restored when the new owner is deleted) or refused (``reject``).
        Re-ADD of the same owner replaces its elements, and removes those of
        its previous ADD that the new plan no longer has (from its manifest).
        With ``plan.proxy_vips`` the same batch also replaces the elements of
        ``proxy_vips`` (a flush, then the addresses) in the plan's families.
        Raises :class:`ConflictError` (policy ``reject``), :class:`TryAgainLater`,
        :class:`KernelError`.
        """
        fams = plan.families()
        if not fams:
            return 0
        for f in fams:  # reject bad conditions before touching anything
            try:
                L.compile_conditions(f, plan.conditions.get(f))
            except ValueError as e:
                raise InvalidConfig(f"conditions: {e}") from None
        wanted = self._wanted(plan)
        me = plan.owner
        base = me.comment
        comment = me.stamped(int(time.time() * 1000))
        my_claims = [(f.family, L.claim_key(f.proto, f.host_ip, f.host_port, h))
                     for f in plan.forwards for h in (me.hash, me.legacy_hash)]
        records = {fam: [(f.proto, f.host_ip, f.host_port, f.container_ip) for f in plan.forwards if f.family == fam]
                   for fam in (4, 6)}
        net_points = [(m.family, L.masq_net_point(m.daddr)) for m in plan.masqs if m.saddr and "/" in m.saddr]

        def build() -> list[Op]:
            ok = self._skeleton_ok(fams, plan)
            ops: list[Op] = []
            for fam in fams:
                if not ok[fam]:
                    ops += L.skeleton(fam, plan.conditions.get(fam))
            if plan.proxy_vips is not None:  # the service proxy's addresses, as read just before
                for fam in fams:
                    ops += L.proxy_vips_ops(fam, plan.proxy_vips.get(fam, ()))
            q = [(N.FAMILY[f], L.TABLE, s, k) for f, s, k, _, _ in wanted]
            q += [(N.FAMILY[f], L.TABLE, L.CLAIMS, k) for f, k in my_claims]
            # the element of masq_nets that holds the pod's own point, whatever its prefix: a
            # re-ADD with another prefix replaces it (intervals may overlap; one per pod)
            q += [(N.FAMILY[f], L.TABLE, L.MASQ_NETS, p) for f, p in net_points]
            q += self._manifest_queries(self._manifest_heads(me))  # one round trip for all of ADD's reads
            got = self.sock.get_elems(q)
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
                        if conflict_policy == "reject":
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
            old = self._manifest(me, manifest_got)
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
                self._release(me, stale_keys, stale_ips, dels, adds)
            self._write_manifest(me, comment, old, records, dels, adds)
            return ops + self._elem_ops(dels, adds)

        return self._transact(build, "ADD")

    @staticmethod
    def _write_manifest(me: Owner, comment: str, old: Manifest,
                        records: dict[int, list[tuple[str, str | None, int, str]]],
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

    @staticmethod
    def _elem_ops(dels: ElemOps, adds: ElemOps) -> list[Op]:
        ops: list[Op] = []
        for (fam, s), items in dels.items():
            for ch in _chunks(items):
                ops.append(N.set_elems(False, N.FAMILY[fam], L.TABLE, s, ch))
        for (fam, s), items in adds.items():
            for ch in _chunks(items):
                ops.append(N.set_elems(True, N.FAMILY[fam], L.TABLE, s, ch))
        return ops

    def _promotions(self, freed: dict[int, list[tuple[str, bytes]]], doomed: Doomed,
                    dels: ElemOps, adds: ElemOps) -> None:
        """For live keys being freed, promote one surviving shadowed claim (dumps ``claims``:
        its size is the number of conflicts on the node, not of mappings)."""
        for fam, keys in freed.items():
            if not keys:
                continue
            claims = self.sock.dump_elems(N.FAMILY[fam], L.TABLE, L.CLAIMS) or []
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

    # ----------------------------------------------------------------- DEL
    def unforward(self, plan: Plan, removed: list[tuple[int, str, int, str]] | None = None) -> int:
        """Remove what ``plan.owner`` owns; returns ops committed.  Never fails for missing state.

        What to remove comes from the owner's manifest (everything its ADDs
        installed, whatever this DEL's config says) united with the keys of
        this config's mappings (both families, no prevResult needed) and the
        masquerade keys of its container IPs.  A port this owner had taken over
        goes back to the newest surviving displaced claim.  Without any mapping
        and without a manifest (state written by an older layout), it falls back
        to scanning the sets for the owner's comment (O(n), rare).  ``removed`` gets
        ``(family, proto, host port, pod IP)`` of each forward removed (read from the
        elements deleted: DEL needs no prevResult for its conntrack clean-up).
        """
        me = plan.owner
        fams = self._our_families()
        if not fams:
            return 0  # no table of ours: nothing of ours to remove
        found: list[tuple[int, str, int, str]] = []

        def build() -> list[Op] | None:
            found.clear()  # a retried batch reads again
            old = self._manifest(me, fams=fams)
            if not plan.host_keys and not any(old.values()):
                return None  # nothing to go by: scan (below)
            keys: dict[int, set[HostKey]] = {fam: set() for fam in fams}
            ips: dict[int, set[str]] = {fam: set() for fam in fams}
            for fam, proto, hip, port in plan.host_keys:
                if fam in keys:
                    keys[fam].add((proto, hip, port))
            for m in plan.masqs:
                if m.family in ips:
                    ips[m.family].add(m.daddr)
            dels: ElemOps = {}
            adds: ElemOps = {}
            for fam in fams:
                for key, rec in old[fam]:
                    keys[fam].add(rec[:3])
                    ips[fam].add(rec[3])
                    dels.setdefault((fam, L.OWNED), []).append((key, None, None))
            self._release(me, keys, ips, dels, adds, found)
            return self._elem_ops(dels, adds)

        n = self._transact(lambda: build() or [], "DEL")
        if n == 0 and not plan.host_keys:
            return self._remove_where(me.owns, "DEL", fams, removed)
        if removed is not None:
            removed += found
        return n

    def _remove_where(self, doomed: Doomed, what: str, fams: Iterable[int] | None = None,
                      removed: list[tuple[int, str, int, str]] | None = None) -> int:
        """Delete every element whose comment satisfies ``doomed``, promoting surviving claims
        (in ``fams``, default: the families whose table is ours; ``removed``: as in
        :meth:`unforward`)."""
        families = self._our_families() if fams is None else fams
        found: list[tuple[int, str, int, str]] = []

        def build() -> list[Op]:
            found.clear()
            dels: ElemOps = {}
            adds: ElemOps = {}
            freed: dict[int, list[tuple[str, bytes]]] = {4: [], 6: []}
            for fam in families:
                for s in L.SETS:
                    for e in self.sock.dump_elems(N.FAMILY[fam], L.TABLE, s) or ():
                        if doomed(e.comment):
                            dels.setdefault((fam, s), []).append((e.full_key, None, None))
                            if s in (L.HOSTPORTS, L.HOSTIP_HOSTPORTS):
                                freed[fam].append((s, e.key))
                                if e.data:
                                    proto, _, port = L.parse_forward_key(fam, s, e.key)
                                    found.append((fam, proto, port, L.parse_forward_data(fam, e.data)[0]))
            self._promotions(freed, doomed, dels, adds)
            return self._elem_ops(dels, adds)
        n = self._transact(build, what)
        if removed is not None:
            removed += found
        return n

    # ----------------------------------------------------------------- CHECK
    def check(self, plan: Plan) -> None:
        """Verify every element of ``plan`` is present, owned and correct.

        Raises :class:`InternalError` naming each missing or wrong object.
        """
        fams = plan.families()
        problems: list[str] = []
        readable: set[int] = set()  # families whose table is ours or missing (a foreign one is never read)
        for fam in fams:
            p = self._skeleton_problems(fam, plan)
            if not (p and p[0].startswith(f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE} is not nlportmap's")):
                readable.add(fam)
            problems += p
        wanted = [w for w in self._wanted(plan) if w[0] in readable]
        have = self.sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k, _, _ in wanted])
        me = plan.owner
        for (fam, s, k, d, label), cur in zip(wanted, have, strict=True):
            where = f"{'ip' if fam == 4 else 'ip6'} {L.TABLE} {s}"
            if cur is None:
                problems.append(f"missing {label} (element of {where})")
            elif not me.owns(cur.comment):
                problems.append(f"{label} is owned by {cur.comment!r}, not {me.comment!r} ({where})")
            elif cur.data != d or cur.full_key != k:
                problems.append(f"{label} points elsewhere ({where})")
        if problems:
            raise InternalError("CHECK failed: " + "; ".join(problems))

    # ----------------------------------------------------------------- GC / list
    def gc(self, valid_tags: set[str], network: str | None = None, started_ms: int | None = None) -> int:
        """CNI GC: remove every element of ``network`` (all networks if None) whose owner
        is not one of ``valid_tags`` (:attr:`Owner.tag`: ``containerID/ifname``) in that
        network; returns ops committed.

        Elements created at or after ``started_ms`` (default: now) survive, so an
        ADD racing the GC is never undone.  Elements are matched on the owner
        comment, so GC reads the whole table (O(n); GC is rare).  A comment of an
        older release counts as the owner :meth:`Owner.owns` gives it to.  A comment
        whose owner cannot be told (a hashed form cut inside the interface name) is kept.
        """
        start = int(time.time() * 1000) if started_ms is None else started_ms
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

        return self._remove_where(doomed, "GC")

    def list(self) -> list[Listed]:
        """Every forward on this node, active ones first, then shadowed claims
        (dumps the maps: O(n), operator path)."""
        out: list[Listed] = []
        fams = self._our_families()
        for fam in fams:
            for s in (L.HOSTIP_HOSTPORTS, L.HOSTPORTS):
                for e in self.sock.dump_elems(N.FAMILY[fam], L.TABLE, s) or ():
                    proto, hip, hport = L.parse_forward_key(fam, s, e.key)
                    cip, cport = L.parse_forward_data(fam, e.data or b"")
                    out.append(Listed(Owner.parse(e.comment), fam, proto, hip, hport, cip, cport, self.name))
        for fam in fams:
            for e in self.sock.dump_elems(N.FAMILY[fam], L.TABLE, L.CLAIMS) or ():
                proto, hip, hport = L.parse_claim_key(fam, e.key)
                cip, cport = L.parse_forward_data(fam, L.live_data_from_claim(fam, e.data or bytes(20)))
                out.append(Listed(Owner.parse(e.comment), fam, proto, hip, hport, cip, cport, self.name,
                                  state="shadowed"))
        return out

    def usable(self) -> str | None:
        """None if nf_tables accepts our transactions here, else the reason.

        Probes with a transaction that deletes a table that never exists: ENOENT
        proves the kernel parsed and authorised a batch (EPERM without
        CAP_NET_ADMIN, EPROTONOSUPPORT/ENOENT socket errors without nf_tables).
        """
        from .netlink import del_table
        try:
            self.sock.commit([del_table(N.NFPROTO_IPV4, "nlportmap_status_probe")])
        except N.NftError as e:
            if e.errors[0][1] == errno.ENOENT:
                return None
            return f"nf_tables refused a transaction: {e.strerror}"
        except OSError as e:
            return f"nf_tables not reachable over netlink: {e}"
        return None  # pragma: no cover - the probe table exists?
