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

from ..errors import InternalError, InvalidConfig, KernelError, TryAgainLater, kernel_boundary
from ..lock import netns_lock, require_lock
from ..plan import Owner
from . import dumps as D
from . import layout as L
from . import owned as O
from . import skeleton as S
from . import wire as N

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterable

    from ..plan import Listed, Plan
    from .owned import Doomed, ElemOps, HostKey, Manifest
    from .wire import Elem, Op

RETRY_ERRNOS = {errno.ERESTART, errno.EBUSY, errno.ENOENT, errno.EEXIST, errno.EINTR, errno.EAGAIN}
MAX_ATTEMPTS = 25
ELEMS_PER_MSG = O.ELEMS_PER_MSG


ConflictError = O.ConflictError


@kernel_boundary("nftables")
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
        return S.our_families(self.sock)

    # the per-owner elements live in nft/owned.py; these names stay for callers (benchmarks)
    _wanted = staticmethod(O.wanted)
    _elem_ops = staticmethod(O.elem_ops)

    def _manifest(self, owner: Owner, got: list[Elem | None] | None = None,
                  fams: Iterable[int] = (4, 6)) -> Manifest:
        return O.read_manifest(self.sock, owner, got, fams)

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
        batch = O.AddBatch(plan, conflict_policy, int(time.time() * 1000))

        def build() -> list[Op]:
            ok = S.skeleton_ok(self.sock, fams, plan, self._repair)
            ops: list[Op] = []
            for fam in fams:
                if not ok[fam]:
                    ops += L.skeleton(fam, plan.conditions.get(fam))
            if plan.proxy_vips is not None:  # the service proxy's addresses, as read just before
                for fam in fams:
                    ops += L.proxy_vips_ops(fam, plan.proxy_vips.get(fam, ()))
            return ops + batch.ops(self.sock)

        return self._transact(build, "ADD")

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
            old = O.read_manifest(self.sock, me, fams=fams)
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
            O.release(self.sock, me, keys, ips, dels, adds, found)
            return O.elem_ops(dels, adds)

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
            return D.remove_where_ops(self.sock, doomed, families, found)
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
            p = S.skeleton_problems(self.sock, fam, plan)
            if not (p and p[0].startswith(f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE} is not nlportmap's")):
                readable.add(fam)
            problems += p
        wanted = [w for w in O.wanted(plan) if w[0] in readable]
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
        return self._remove_where(D.gc_doomed(valid_tags, network, start), "GC")

    def list(self) -> list[Listed]:
        """Every forward on this node, active ones first, then shadowed claims
        (dumps the maps: O(n), operator path)."""
        return D.list_forwards(self.sock, self._our_families(), self.name)

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
