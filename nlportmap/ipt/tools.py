"""Running the iptables tools for :class:`~nlportmap.ipt.backend.IptBackend`: which
binary, ``iptables-save`` reads and snapshots, ``iptables-restore`` runs (with the
failing line named), and the read+restore loop that retries while another writer races.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from ..errors import KernelError
from ..lock import require_lock
from . import rules as R

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

#: Read+restore attempts when the table changed between our read and our restore.
ATTEMPTS = 4
#: How iptables-restore 1.8 names the failing input line (both flavours, both forms seen).
_LINE_RE = re.compile(r"line (\d+) failed|Error occurred at line: (\d+)")


def failed_line(err: str) -> int | None:
    m = _LINE_RE.search(err)
    return int(m.group(1) or m.group(2)) if m else None


def fam_word(fam: int) -> str:
    return "ipv4" if fam == 4 else "ipv6"


class IptTools:
    """``iptables-save`` / ``iptables-restore`` subprocesses of one flavour (see
    :class:`~nlportmap.ipt.backend.IptBackend` for ``variant`` and ``timeout``)."""

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

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
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

    def read(self, fam: int, table: str = R.TABLE) -> tuple[str, R.NatTable]:
        """``iptables-save -t <table>`` -> (raw text, parsed table).  Raises KernelError."""
        cp = self._run([self.tool(fam, "-save"), "-t", table])
        if cp.returncode != 0:
            raise KernelError(f"{self.tool(fam, '-save')} -t {table} failed (exit {cp.returncode}): "
                              f"{cp.stderr.strip()}")
        return cp.stdout, R.parse_save(cp.stdout, table)

    def restore(self, fam: int, lines: list[str]) -> str | None:
        """Run one ``iptables-restore --noflush -w`` with ``lines`` (table ``nat``); None on
        success, else the error text (the tool's stderr, plus the offending line when it names one)."""
        return self.restore_tables(fam, [(R.TABLE, lines)])

    def restore_tables(self, fam: int, sections: list[tuple[str, list[str]]]) -> str | None:
        """Like :meth:`restore`, one table section per ``(table, lines)`` with lines (each
        table commits on its own, in order; the tool stops at the first failure)."""
        text = "".join(R.restore_text(lines, table) for table, lines in sections if lines)
        if not text:
            return None
        cp = self._run([self.tool(fam, "-restore"), "--noflush", "-w"], stdin=text)
        if cp.returncode == 0:
            return None
        err = cp.stderr.strip() or f"exit status {cp.returncode}"
        n = failed_line(err)
        if n is not None:
            all_lines = text.splitlines()
            if 1 <= n <= len(all_lines):
                err += f" [line {n}: {all_lines[n - 1]}]"
        return f"{self.tool(fam, '-restore')}: {err}"

    def _apply(self, fam: int, build: Callable[[R.NatTable], list[str]], what: str, lenient: bool = False) -> int:
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

    def read_state(self, fam: int) -> R.Snapshot:
        """The tables an ADD of family ``fam`` writes: ``nat``, and for IPv4 ``raw``
        (the localnet guard).  Raises KernelError."""
        _, nat = self.read(fam)
        raw = self.read(fam, R.GUARD_TABLE)[1] if fam == 4 else None
        return R.Snapshot(nat, raw)

    def _rollback(self, fams: list[int], ccs: dict[int, R.ContainerChain],
                  before: dict[int, R.Snapshot]) -> list[str]:
        """Put every family in ``fams`` back to its snapshot in ``before``, newest first.

        Per family: re-read its tables and run one restore of
        :func:`~nlportmap.ipt.rules.undo_lines` (``nat``: this container's entry
        rules and chain as they were -- absent, or the previous rules verbatim at
        their old positions -- and the shared chains/rules this ADD created
        removed) and, for IPv4, of the guard objects this ADD created.  Nothing
        to undo (the family's restore never committed) costs one read and no
        restore.  Returns the problems met (empty: all rolled back).
        """
        problems = []
        for fam in reversed(fams):
            try:
                now = self.read_state(fam)
                sections = []
                if now.raw is not None:
                    sections.append((R.GUARD_TABLE, R.undo_shared_lines(before[fam].raw or R.NatTable(), now.raw,
                                                                        *R.guard_objects())))
                sections.append((R.TABLE, R.undo_lines(ccs[fam], before[fam].nat, now.nat)))
                sections = [(t, ls) for t, ls in sections if ls]
                if sections:
                    err = self.restore_tables(fam, sections)
                    if err:
                        problems.append(f"{fam_word(fam)}: {err}")
            except KernelError as e:
                problems.append(f"{fam_word(fam)}: {e.msg}")
        return problems
