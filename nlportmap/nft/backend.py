"""The nftables backend: apply, verify and remove a :class:`~nlportmap.plan.Plan`.

Each of ADD (:meth:`NftBackend.forward`), DEL (:meth:`NftBackend.unforward`)
and GC is *read the owner comments of the keys involved, then one atomic
batch*, under the netns lock (:mod:`nlportmap.lock`) and guarded by the ruleset
generation id, retried with jittered backoff when another nftables user
committed in between.  ADD and DEL read only their own keys (single-element
gets), so their cost does not depend on how many mappings the node holds.

Conflicts: a host port claimed by another owner is taken over by the newest
ADD (``conflictPolicy: replace``, the default) or refused naming the current
owner (``reject``).  DEL deletes an element only if its comment names this
owner, so deleting a container whose port was taken over leaves the new owner
intact.
"""
from __future__ import annotations

import errno
import random
import time

from ..errors import InternalError, InvalidConfig, KernelError, TryAgainLater
from ..lock import netns_lock
from ..plan import Listed, Owner, Plan
from . import layout as L
from . import netlink as N

RETRY_ERRNOS = {errno.ERESTART, errno.EBUSY, errno.ENOENT, errno.EEXIST, errno.EINTR, errno.EAGAIN}
MAX_ATTEMPTS = 25
ELEMS_PER_MSG = 200  # keeps one NLA list well under 64 KiB


class ConflictError(InvalidConfig):
    """conflictPolicy=reject and a host port is already owned by someone else."""


def _chunks(items: list, n: int = ELEMS_PER_MSG):
    for i in range(0, len(items), n):
        yield items[i:i + n]


class NftBackend:
    """nftables over netlink.  ``sock`` may be injected (tests open it in another netns)."""

    name = "nftables"

    def __init__(self, sock: N.NetfilterSocket | None = None):
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
    def _transact(self, build, what: str) -> int:
        """Run ``build(genid) -> ops`` and commit under lock + genid; returns #ops committed."""
        with netns_lock():
            for attempt in range(MAX_ATTEMPTS):
                gen = self.sock.genid()
                ops = build(gen)
                if not ops:
                    return 0
                try:
                    self.sock.commit(ops, gen)
                    return len(ops)
                except N.NftError as e:
                    code = e.errors[0][1]
                    if code in RETRY_ERRNOS and attempt + 1 < MAX_ATTEMPTS:
                        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                        continue
                    if code in RETRY_ERRNOS:
                        raise TryAgainLater(f"{what}: nftables kept changing, gave up after {MAX_ATTEMPTS} attempts: {e}") from e
                    raise KernelError(f"{what}: nftables refused the transaction: {e}") from e
        raise TryAgainLater(f"{what}: gave up")  # pragma: no cover

    def _skeleton_ok(self, fams, plan: Plan) -> dict[int, bool]:
        out = {}
        for fam in fams:
            rules = self.sock.dump_rules(N.FAMILY[fam], L.TABLE, "prerouting")
            want = L.fingerprint(fam, plan.conditions.get(fam))
            out[fam] = bool(rules) and all(r.comment == want for r in rules)
        return out

    @staticmethod
    def _wanted(plan: Plan):
        """[(family, set, key, data, label)] for every element the plan needs."""
        out = []
        for f in plan.forwards:
            s, k = L.forward_key(f.family, f.proto, f.host_ip, f.host_port)
            out.append((f.family, s, k, L.forward_data(f.container_ip, f.container_port), f"DNAT {f}"))
        for m in plan.masqs:
            s, k = L.masq_key(m.saddr, m.daddr)
            out.append((m.family, s, k, None, str(m)))
        return out

    # ----------------------------------------------------------------- ADD
    def forward(self, plan: Plan, conflict_policy: str = "replace") -> int:
        """Install ``plan`` in one transaction; returns the number of ops committed.

        Raises :class:`ConflictError` (policy ``reject``), :class:`TryAgainLater`,
        :class:`KernelError`.  Re-ADD of the same owner replaces its elements.
        """
        fams = plan.families()
        if not fams:
            return 0
        try:
            conds = {f: L.compile_conditions(f, plan.conditions.get(f)) for f in fams}
        except ValueError as e:
            raise InvalidConfig(f"conditions: {e}") from None
        del conds
        wanted = self._wanted(plan)
        me = plan.owner.tag
        comment = plan.owner.comment

        def build(gen):
            ok = self._skeleton_ok(fams, plan)
            ops = []
            for fam in fams:
                if not ok[fam]:
                    ops += L.skeleton(fam, plan.conditions.get(fam))
            have = self.sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k, _, _ in wanted])
            dels: dict = {}
            adds: dict = {}
            for (fam, s, k, d, label), cur in zip(wanted, have):
                if cur is not None:
                    owner = Owner.tag_of(cur.comment)
                    if owner == me and cur.data == d and cur.comment == comment:
                        continue  # identical: nothing to do
                    if owner != me and conflict_policy == "reject":
                        raise ConflictError(
                            f"host port already in use: {label} is owned by {cur.comment or 'unknown'}",
                            details=cur.comment or "")
                    dels.setdefault((fam, s), []).append((k, None, None))
                adds.setdefault((fam, s), []).append((k, d, comment))
            for (fam, s), items in dels.items():
                for ch in _chunks(items):
                    ops.append(N.set_elems(False, N.FAMILY[fam], L.TABLE, s, ch))
            for (fam, s), items in adds.items():
                for ch in _chunks(items):
                    ops.append(N.set_elems(True, N.FAMILY[fam], L.TABLE, s, ch))
            return ops

        return self._transact(build, "ADD")

    # ----------------------------------------------------------------- DEL
    def unforward(self, plan: Plan) -> int:
        """Remove what ``plan.owner`` owns; returns ops committed.  Never fails for missing state.

        Keys come from the mappings (both families, no prevResult needed); the
        masquerade keys from the container IPs (prevResult, or the data of our
        own DNAT elements).  Without any mapping (the runtime sent none) it
        falls back to scanning the sets for the owner's comment (O(n), rare).
        """
        me = plan.owner.tag
        if not plan.host_keys:
            return self._unforward_scan(me)

        def build(gen):
            q = []
            for fam, proto, hip, port in plan.host_keys:
                s, k = L.forward_key(fam, proto, hip, port)
                q.append((N.FAMILY[fam], L.TABLE, s, k))
            have = self.sock.get_elems(q)
            dels: dict = {}
            pod_ips: dict[int, set] = {4: set(), 6: set()}
            for (fam, *_), (F, _, s, k), cur in zip(plan.host_keys, q, have):
                if cur is not None and Owner.tag_of(cur.comment) == me:
                    dels.setdefault((fam, s), []).append((k, None, None))
                    if cur.data:
                        pod_ips[fam].add(L.parse_forward_data(fam, cur.data)[0])
            for m in plan.masqs:
                pod_ips[m.family].add(m.daddr)
            mq = []
            for fam, ips in pod_ips.items():
                for ip in sorted(ips):
                    cands = [L.masq_key(ip, ip), L.masq_key(None, ip)]
                    if fam == 4:
                        cands.append(L.masq_key("127.0.0.1", ip))
                    mq += [(fam, s, k) for s, k in cands]
            for (fam, s, k), cur in zip(mq, self.sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k in mq])):
                if cur is not None and Owner.tag_of(cur.comment) == me:
                    dels.setdefault((fam, s), []).append((k, None, None))
            return [N.set_elems(False, N.FAMILY[fam], L.TABLE, s, ch)
                    for (fam, s), items in dels.items() for ch in _chunks(items)]

        return self._transact(build, "DEL")

    def _unforward_scan(self, me: str) -> int:
        return self._remove_where(lambda tag: tag == me, "DEL")

    def _remove_where(self, doomed, what: str) -> int:
        def build(gen):
            ops = []
            for fam in (4, 6):
                for s in L.SETS:
                    els = self.sock.dump_elems(N.FAMILY[fam], L.TABLE, s)
                    if not els:
                        continue
                    items = [(e.key, None, None) for e in els if doomed(Owner.tag_of(e.comment))]
                    ops += [N.set_elems(False, N.FAMILY[fam], L.TABLE, s, ch) for ch in _chunks(items)]
            return ops
        return self._transact(build, what)

    # ----------------------------------------------------------------- CHECK
    def check(self, plan: Plan) -> None:
        """Verify every element of ``plan`` is present, owned and correct.

        Raises :class:`InternalError` naming each missing or wrong object.
        """
        fams = plan.families()
        problems = []
        for fam, good in self._skeleton_ok(fams, plan).items():
            if not good:
                problems.append(f"table {'ip' if fam == 4 else 'ip6'} {L.TABLE}: prerouting jump rule missing or stale")
        wanted = self._wanted(plan)
        have = self.sock.get_elems([(N.FAMILY[f], L.TABLE, s, k) for f, s, k, _, _ in wanted])
        me = plan.owner.tag
        for (fam, s, k, d, label), cur in zip(wanted, have):
            where = f"{'ip' if fam == 4 else 'ip6'} {L.TABLE} {s}"
            if cur is None:
                problems.append(f"missing {label} (element of {where})")
            elif Owner.tag_of(cur.comment) != me:
                problems.append(f"{label} is owned by {cur.comment!r}, not {me!r} ({where})")
            elif cur.data != d:
                problems.append(f"{label} points elsewhere ({where})")
        if problems:
            raise InternalError("CHECK failed: " + "; ".join(problems))

    # ----------------------------------------------------------------- GC / list
    def gc(self, valid_tags: set[str]) -> int:
        """Remove every element whose owner tag is not in ``valid_tags``; returns ops committed."""
        return self._remove_where(lambda tag: tag not in valid_tags, "GC")

    def list(self) -> list[Listed]:
        """Every forward installed on this node (dumps the maps: O(n), operator path)."""
        out = []
        for fam in (4, 6):
            for s in (L.HOSTIP_HOSTPORTS, L.HOSTPORTS):
                for e in self.sock.dump_elems(N.FAMILY[fam], L.TABLE, s) or ():
                    proto, hip, hport = L.parse_forward_key(fam, s, e.key)
                    cip, cport = L.parse_forward_data(fam, e.data or b"")
                    out.append(Listed(Owner.parse(e.comment), fam, proto, hip, hport, cip, cport, self.name))
        return out

    def usable(self) -> str | None:
        """None if nf_tables answers over netlink here, else the reason."""
        try:
            self.sock.genid()
            return None
        except OSError as e:
            return f"nf_tables not reachable over netlink: {e}"
