"""The iptables backend: upstream's iptables layout, applied with ``iptables-restore``.

Same seam as :class:`nlportmap.nft.backend.NftBackend`.  The rules are
upstream's, string for string (:mod:`nlportmap.ipt.rules`, reference
``portmap-behaviour.md`` §3), so state written by the upstream Go plugin and by
this backend is interchangeable (DEL/CHECK/GC work on either).

Each operation, per address family (``iptables-*`` for 4, ``ip6tables-*`` for 6),
under :func:`nlportmap.lock.netns_lock`: one ``iptables-save -t nat`` read, then
(if anything must change) one ``iptables-restore --noflush -w`` fed on stdin --
atomic per table, never rule-by-rule execs (netlink-notes §10).  If the restore
fails and a fresh read shows the table changed meanwhile (another iptables user
raced us), the read+restore is repeated (up to :data:`ATTEMPTS` times).

Differences from upstream (deliberate):

- re-ADD replaces the container's chain and entry rules (upstream appends
  missing rules and keeps stale ones, §3.11);
- ``conflict_policy``: ``reject`` refuses a host port another container's
  chain already DNATs (naming it); ``replace`` (default) inserts this
  container's entry rules at the top of ``CNI-HOSTPORT-DNAT`` when there is
  such a conflict, so the newest ADD wins (upstream: the oldest wins, §6 item 1);
- DEL succeeds silently when neither ``iptables`` nor ``ip6tables`` is usable
  (upstream fails, §3.9 / §6 item 9), and removes every rule jumping to the
  container's chain wherever it is;
- CHECK also verifies the PREROUTING/OUTPUT/POSTROUTING jumps and the
  SETMARK/MASQ rules, and reports stale extra rules in the container's chain;
- GC (upstream: not implemented) removes containers whose ID is not in the
  valid attachments.
"""
from __future__ import annotations

from ..errors import CNIError, InternalError, InvalidConfig, KernelError, kernel_boundary
from ..lock import netns_lock
from ..plan import Listed, Owner, Plan
from . import rules as R
from .probe import ChainProbe
from .tools import ATTEMPTS, IptTools, fam_word as _fam_word, failed_line as _failed_line

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Forward

__all__ = ["ATTEMPTS", "ConflictError", "IptBackend"]


class ConflictError(InvalidConfig):
    """conflictPolicy=reject and a host port is already DNATed by another container's chain."""


@kernel_boundary("iptables")
class IptBackend(IptTools):
    """iptables via ``iptables-save`` / ``iptables-restore`` subprocesses.

    ``variant``: ``""`` runs ``iptables-restore`` etc. (whatever flavour the
    host's alternatives point to); ``"nft"`` / ``"legacy"`` run
    ``iptables-nft-restore`` / ``iptables-legacy-restore``.  ``timeout``:
    seconds per tool run.
    """

    name = "iptables"
    #: GC cannot tell when a chain was created: it has no "created after GC started" guard
    gc_spares_new = False

    # the tools, reads, restores and the read+restore loop: IptTools (ipt/tools.py)

    # ----------------------------------------------------------------- ADD
    @staticmethod
    def validate(plan: Plan) -> None:
        """Every token this plan writes from the config can go into an ``iptables-restore``
        line; raise :class:`InvalidConfig` naming the field it came from otherwise."""
        fields = [(f"conditionsV{fam}", list((plan.raw_conditions or {}).get(fam) or ())) for fam in (4, 6)]
        if plan.external_mark_chain is not None:
            fields.append(("externalSetMarkChain", [plan.external_mark_chain]))
        for name, tokens in fields:
            for tok in tokens:
                try:
                    R.quote(tok)
                except ValueError as e:
                    raise InvalidConfig(f"{name}: {e}", details=name) from None

    def forward(self, plan: Plan, conflict_policy: str = "replace") -> int:
        """Install ``plan``, all families or none; returns restore lines applied.

        1. Checks for every family before anything is written: tokens renderable
           (:meth:`validate`), the family's tools in PATH, one read of its tables,
           and (``reject``) no host port DNATed by another container's chain.
        2. One restore per family (IPv4 first: its ``raw`` guard, then ``nat``).
        3. If a restore still fails (or a re-read after a race shows a new
           conflict), every family this ADD may have touched is rolled back to
           the snapshot taken in step 1 (:meth:`_rollback`): an ADD that fails
           changes nothing.

        Raises :class:`ConflictError` (``reject`` and a port held by another
        chain), :class:`KernelError` (tool missing or restore refused: the
        message carries the tool's stderr and the offending line),
        :class:`InvalidConfig` (a token that cannot be written, naming its field).
        """
        self.validate(plan)
        fams = plan.families()
        for fam in fams:
            reason = self.tools_missing(fam)
            if reason:
                raise KernelError(f"failed to open iptables: {reason}")
        ccs = {fam: R.container_chain(plan, fam) for fam in fams}
        total = 0
        with netns_lock():
            before = {fam: self.read_state(fam) for fam in fams}
            for fam in fams:
                self._refuse(ccs[fam], plan, before[fam].nat, conflict_policy)
            touched: list[int] = []
            try:
                for fam in fams:
                    touched.append(fam)
                    total += self._commit_family(fam, ccs[fam], plan, before[fam], conflict_policy)
            except CNIError as e:
                problems = self._rollback(touched, ccs, before)
                if problems:
                    raise type(e)(f"{e.msg}; rollback incomplete: {'; '.join(problems)}", e.details) from None
                raise
        return total

    @staticmethod
    def _refuse(cc: R.ContainerChain, plan: Plan, nt: R.NatTable, conflict_policy: str
                ) -> list[tuple[Forward, str, tuple[str, str] | None]]:
        """The conflicts of ``cc`` in ``nt``; raises :class:`ConflictError` under ``reject``."""
        clash = R.conflicts(cc, plan.forwards, nt)
        if clash and conflict_policy == "reject":
            f, chain, who = clash[0]
            owner = f'network "{who[0]}" container "{who[1]}"' if who else "unknown owner"
            raise ConflictError(f"host port already in use: {f} is DNATed by {chain} ({owner})", details=chain)
        return clash

    def _commit_family(self, fam: int, cc: R.ContainerChain, plan: Plan, state: R.Snapshot,
                       conflict_policy: str) -> int:
        """One restore (IPv4: ``raw`` guard, then ``nat``) on top of ``state``; re-read and
        retry while another writer keeps changing the tables."""
        for attempt in range(ATTEMPTS):
            clash = self._refuse(cc, plan, state.nat, conflict_policy)
            sections = [(R.GUARD_TABLE, R.guard_lines(state.raw))] if state.raw is not None else []
            sections.append((R.TABLE, R.add_lines(cc, state.nat, front=bool(clash))))
            err = self.restore_tables(fam, sections)
            if err is None:
                return sum(len(ls) for _, ls in sections)
            fresh = self.read_state(fam)
            if fresh == state or attempt + 1 == ATTEMPTS:  # unchanged: not a race, a real refusal
                raise KernelError(f"unable to setup DNAT: {err}")
            state = fresh
        raise KernelError("unable to setup DNAT: gave up")  # pragma: no cover

    # ----------------------------------------------------------------- DEL
    def teardown_chains(self, fam: int, chains: list[str], what: str,
                        removed: list[tuple[int, str, int, str]] | None = None) -> int:
        """Remove ``chains`` and every rule jumping to them in family ``fam`` (caller holds
        the netns lock); returns restore lines applied (0: none existed, or the family's
        tools are missing or cannot read the table).  ``removed`` gets ``(family, proto,
        host port, pod IP)`` of each DNAT rule of ``chains`` that was removed.
        Raises :class:`KernelError` prefixed with ``what`` if the restore is refused."""
        found: list[tuple[int, str, int, str]] = []

        def build(nt: R.NatTable) -> list[str]:
            found[:] = [(fam, r.proto, r.host_port, r.container_ip) for c in chains if nt.has_chain(c)
                        for r in (R.parse_dnat_rule(spec) for spec in nt.rules(c)) if r]
            return R.teardown_lines(nt, chains)

        n = self._apply(fam, build, what, lenient=True)
        if n and removed is not None:
            removed += found
        return n

    def unforward(self, plan: Plan, removed: list[tuple[int, str, int, str]] | None = None) -> int:
        """Remove ``CNI-DN-<hash>`` (and legacy ``CNI-SN-<hash>``) and every rule jumping
        to them, both families; returns restore lines applied.

        Idempotent: missing chains/rules mean nothing to do; an unusable family
        is skipped, and with neither usable it returns 0 (upstream fails, §3.9).
        A family where neither chain exists runs no tool at all: that is known
        from one netlink lookup by chain name (:class:`~nlportmap.ipt.probe.ChainProbe`;
        iptables-nft), and only a legacy ``nat`` table makes us read with
        ``iptables-save`` as before.  So a DEL for a container that owns nothing
        (e.g. one without portMappings) costs no exec, and one without
        portMappings for a container that does own rules still removes them.
        ``removed`` gets ``(family, proto, host port, pod IP)`` of each DNAT rule removed
        (read from the chain itself: DEL needs no prevResult for its conntrack clean-up).
        Raises :class:`KernelError` only when a tool refuses a removal.
        """
        o = plan.owner
        chains = [R.dn_chain(o.network, o.container_id), R.sn_chain(o.network, o.container_id)]
        total = 0
        with ChainProbe() as probe, netns_lock():
            for fam in (4, 6):
                if not probe.may_hold(fam, chains):
                    continue  # neither chain exists: nothing to remove, no tool run
                total += self.teardown_chains(fam, chains, f"could not teardown {_fam_word(fam)} dnat", removed)
        return total

    # ----------------------------------------------------------------- CHECK
    def check(self, plan: Plan) -> None:
        """Verify ``plan``'s rules are installed; raise :class:`InternalError` naming what is missing.

        Texts follow upstream (§3.10): ``could not check ipv4 dnat: chain <name>
        not found in iptables table nat`` / ``...: rule <rule> in chain <chain>
        not found in table nat``; every missing rule is listed, and extra rules
        in the container chain are reported as stale.
        """
        problems: list[str] = []
        for fam in plan.families():
            reason = self.tools_missing(fam)
            if reason:
                problems.append(f"could not check {_fam_word(fam)} dnat: iptables is not usable: {reason}")
                continue
            cc = R.container_chain(plan, fam)
            problems += [f"could not check {_fam_word(fam)} dnat: {p}" for p in self._check_family(fam, cc)]
        if problems:
            raise InternalError("; ".join(problems))

    def _check_family(self, fam: int, cc: R.ContainerChain) -> list[str]:
        _, nt = self.read(fam)
        if not nt.has_chain(cc.name):
            return [f"chain {cc.name} not found in iptables table nat"]
        out = []
        items = R.check_lines(cc)
        # One restore of -C lines; it stops at the first missing rule ("line N failed"):
        # drop that line and run again, so every missing rule is reported.
        while items:
            err = self.restore(fam, [ln for _, _, ln in items])
            if err is None:
                break
            n = _failed_line(err)
            if n is None or not 2 <= n <= len(items) + 1:
                raise KernelError(f"{self.tool(fam, '-restore')} -C failed: {err}")
            chain, rule, _ = items.pop(n - 2)  # line 1 is "*nat"
            out.append(f"rule {rule} in chain {chain} not found in table nat")
        n = len(nt.rules(cc.name))
        if n > len(cc.rules):
            out.append(f"chain {cc.name} has {n} rules, expected {len(cc.rules)} (stale rules)")
        return out

    # ----------------------------------------------------------------- GC / list
    def gc(self, valid_tags: set[str], network: str | None = None, started_ms: int | None = None) -> int:
        """Remove the chains (and jumps) of containers not in ``valid_tags``; returns lines applied.

        ``valid_tags``: ``"<containerID>/<ifname>"``.  iptables state has no
        ifname, so a container is valid if any tag has its ID.  Containers are
        found by their entry-rule comments in ``CNI-HOSTPORT-DNAT``; chains whose
        comment cannot be parsed (cut long comments, foreign rules) are kept.
        ``network``: only touch containers of that network (CNI GC is per network).
        """
        valid = {t.rsplit("/", 1)[0] for t in valid_tags}
        total = 0
        with netns_lock():
            for fam in (4, 6):
                def build(nt: R.NatTable) -> list[str]:
                    doomed: list[str] = []
                    for name, who, _ in R.installed(nt):
                        if who is None or who[1] in valid or (network is not None and who[0] != network):
                            continue
                        if name != R.dn_chain(*who):
                            continue  # comment does not match the chain it jumps to: not ours to judge
                        doomed += [name, R.sn_chain(*who)]
                    return R.teardown_lines(nt, doomed)

                total += self._apply(fam, build, f"GC {_fam_word(fam)}", lenient=True)
        return total

    def list(self) -> list[Listed]:
        """Every DNAT rule of every ``CNI-DN-`` chain, both families (owner from the entry
        comment; ifname is unknown to iptables state and reported as ``""``)."""
        out: list[Listed] = []
        for fam in (4, 6):
            if self.tools_missing(fam):
                continue
            try:
                _, nt = self.read(fam)
            except KernelError:
                continue
            for _chain, who, rules in R.installed(nt):
                owner = Owner(who[1], "", who[0]) if who else None
                for r in rules:
                    out.append(Listed(owner, fam, r.proto, r.host_ip, r.host_port,
                                      r.container_ip, r.container_port, self.name))
        return out
