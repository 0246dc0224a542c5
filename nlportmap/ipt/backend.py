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

import os
import re
import shutil
import subprocess

from ..errors import InternalError, InvalidConfig, KernelError
from ..lock import netns_lock, require_lock
from ..plan import Listed, Owner, Plan
from . import rules as R

#: Read+restore attempts when the table changed between our read and our restore.
ATTEMPTS = 4
#: How iptables-restore 1.8 names the failing input line (both flavours, both forms seen).
_LINE_RE = re.compile(r"line (\d+) failed|Error occurred at line: (\d+)")


def _failed_line(err: str) -> int | None:
    m = _LINE_RE.search(err)
    return int(m.group(1) or m.group(2)) if m else None


class ConflictError(InvalidConfig):
    """conflictPolicy=reject and a host port is already DNATed by another container's chain."""


def _fam_word(fam: int) -> str:
    return "ipv4" if fam == 4 else "ipv6"


class IptBackend:
    """iptables via ``iptables-save`` / ``iptables-restore`` subprocesses.

    ``variant``: ``""`` runs ``iptables-restore`` etc. (whatever flavour the
    host's alternatives point to); ``"nft"`` / ``"legacy"`` run
    ``iptables-nft-restore`` / ``iptables-legacy-restore``.  ``timeout``:
    seconds per tool run.
    """

    name = "iptables"

    def __init__(self, variant: str = "", timeout: float = 30.0):
        if variant not in ("", "nft", "legacy"):
            raise ValueError(f"unknown iptables variant {variant!r}")
        self.variant = variant
        self.timeout = timeout
        self._usable: dict[int, str | None] = {}

    def close(self) -> None:
        """Nothing to release (seam compatibility with NftBackend)."""

    # ------------------------------------------------------------ tools
    def tool(self, fam: int, kind: str) -> str:
        """Binary name: ``kind`` in ``""`` (the iptables command), ``"-save"``, ``"-restore"``."""
        base = "iptables" if fam == 4 else "ip6tables"
        if self.variant:
            base += "-" + self.variant
        return base + kind

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout, env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError as e:
            raise KernelError(f"failed to open iptables: {argv[0]}: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise KernelError(f"{argv[0]} did not finish within {self.timeout:g}s") from None

    def tools_missing(self, fam: int) -> str | None:
        """None if the family's ``-save`` and ``-restore`` tools are in PATH, else the reason (no exec)."""
        for kind in ("-restore", "-save"):
            if shutil.which(self.tool(fam, kind)) is None:
                return f"{self.tool(fam, kind)} not found in PATH"
        return None

    def family_usable(self, fam: int) -> str | None:
        """None if the family's restore/save tools exist and ``<iptables> -t nat -S`` works,
        else the reason (cached per instance)."""
        if fam in self._usable:
            return self._usable[fam]
        reason = None
        for kind in ("-restore", "-save", ""):
            if shutil.which(self.tool(fam, kind)) is None:
                reason = f"{self.tool(fam, kind)} not found in PATH"
                break
        if reason is None:
            try:
                cp = self._run([self.tool(fam, ""), "-t", R.TABLE, "-S", "-w"])
                if cp.returncode != 0:
                    reason = f"{self.tool(fam, '')} -t nat -S failed: {cp.stderr.strip() or cp.returncode}"
            except KernelError as e:
                reason = e.msg
        self._usable[fam] = reason
        return reason

    def usable(self) -> str | None:
        """None if ``iptables-restore`` exists and ``iptables -t nat -S`` works (IPv4), else the reason."""
        return self.family_usable(4)

    def read(self, fam: int) -> tuple[str, R.NatTable]:
        """``iptables-save -t nat`` -> (raw text, parsed table).  Raises KernelError."""
        cp = self._run([self.tool(fam, "-save"), "-t", R.TABLE])
        if cp.returncode != 0:
            raise KernelError(f"{self.tool(fam, '-save')} -t nat failed (exit {cp.returncode}): {cp.stderr.strip()}")
        return cp.stdout, R.parse_save(cp.stdout)

    def restore(self, fam: int, lines: list[str]) -> str | None:
        """Run one ``iptables-restore --noflush -w`` with ``lines``; None on success, else
        the error text (the tool's stderr, plus the offending line when it names one)."""
        text = R.restore_text(lines)
        cp = self._run([self.tool(fam, "-restore"), "--noflush", "-w"], stdin=text)
        if cp.returncode == 0:
            return None
        err = cp.stderr.strip() or f"exit status {cp.returncode}"
        n = _failed_line(err)
        if n is not None:
            all_lines = text.splitlines()
            if 1 <= n <= len(all_lines):
                err += f" [line {n}: {all_lines[n - 1]}]"
        return f"{self.tool(fam, '-restore')}: {err}"

    def _apply(self, fam: int, build, what: str, lenient: bool = False) -> int:
        """Read, ``build(table) -> lines``, restore; retry while the table keeps changing.

        Returns the number of restore lines applied (0: nothing to do).  ``lenient``
        (removals): tools missing or the read failing mean the family is unusable,
        hence holds nothing of ours: return 0 (upstream's DEL skips such a family too).
        """
        if lenient and self.tools_missing(fam):
            return 0
        try:
            _, nt = self.read(fam)
        except KernelError:
            if lenient:
                return 0
            raise
        for attempt in range(ATTEMPTS):
            lines = build(nt)
            if not lines:
                return 0
            require_lock(f"an {self.tool(fam, '-restore')} change")  # see nlportmap.lock
            err = self.restore(fam, lines)
            if err is None:
                return len(lines)
            _, nt2 = self.read(fam)
            if nt2 == nt or attempt + 1 == ATTEMPTS:  # unchanged: not a race, a real refusal
                raise KernelError(f"{what}: {err}")
            nt = nt2
        raise KernelError(f"{what}: gave up")  # pragma: no cover

    # ----------------------------------------------------------------- ADD
    def forward(self, plan: Plan, conflict_policy: str = "replace") -> int:
        """Install ``plan`` (one restore per family); returns restore lines applied.

        Raises :class:`ConflictError` (``reject`` and a port held by another
        chain), :class:`KernelError` (tool missing or restore refused: the
        message carries the tool's stderr and the offending line),
        :class:`InvalidConfig` (a condition token that cannot be written).
        """
        total = 0
        with netns_lock():
            for fam in plan.families():
                reason = self.tools_missing(fam)
                if reason:
                    raise KernelError(f"failed to open iptables: {reason}")
                cc = R.container_chain(plan, fam)
                try:
                    R.check_lines(cc)  # renders every token once: catches unwritable ones early
                except ValueError as e:
                    raise InvalidConfig(f"conditionsV{fam}: {e}") from None

                def build(nt, cc=cc):
                    clash = R.conflicts(cc, plan.forwards, nt)
                    if clash and conflict_policy == "reject":
                        f, chain, who = clash[0]
                        owner = f'network "{who[0]}" container "{who[1]}"' if who else "unknown owner"
                        raise ConflictError(f"host port already in use: {f} is DNATed by {chain} ({owner})",
                                            details=chain)
                    return R.add_lines(cc, nt, front=bool(clash))

                total += self._apply(fam, build, "unable to setup DNAT")
        return total

    # ----------------------------------------------------------------- DEL
    def teardown_chains(self, fam: int, chains: list[str], what: str) -> int:
        """Remove ``chains`` and every rule jumping to them in family ``fam`` (caller holds
        the netns lock); returns restore lines applied (0: none existed, or the family's
        tools are missing or cannot read the table).
        Raises :class:`KernelError` prefixed with ``what`` if the restore is refused."""
        return self._apply(fam, lambda nt: R.teardown_lines(nt, chains), what, lenient=True)

    def unforward(self, plan: Plan) -> int:
        """Remove ``CNI-DN-<hash>`` (and legacy ``CNI-SN-<hash>``) and every rule jumping
        to them, both families; returns restore lines applied.

        Idempotent: missing chains/rules mean nothing to do; an unusable family
        is skipped, and with neither usable it returns 0 (upstream fails, §3.9).
        Raises :class:`KernelError` only when a tool refuses a removal.
        """
        o = plan.owner
        chains = [R.dn_chain(o.network, o.container_id), R.sn_chain(o.network, o.container_id)]
        total = 0
        with netns_lock():
            for fam in (4, 6):
                total += self.teardown_chains(fam, chains, f"could not teardown {_fam_word(fam)} dnat")
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
    def gc(self, valid_tags: set[str], network: str | None = None) -> int:
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
                def build(nt):
                    doomed = []
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
        out = []
        for fam in (4, 6):
            if self.tools_missing(fam):
                continue
            try:
                _, nt = self.read(fam)
            except KernelError:
                continue
            for name, who, rules in R.installed(nt):
                owner = Owner(who[1], "", who[0]) if who else None
                for r in rules:
                    out.append(Listed(owner, fam, r.proto, r.host_ip, r.host_port,
                                      r.container_ip, r.container_port, self.name))
        return out
