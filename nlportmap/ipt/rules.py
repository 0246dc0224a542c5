"""Upstream's iptables layout as data, and the ``iptables-restore`` texts that apply it.

PURE: no subprocess, no files.  :mod:`nlportmap.ipt.backend` runs the tools.

Everything here reproduces the upstream Go ``portmap`` iptables backend
(reference ``portmap-behaviour.md`` §3); chain names, comments and rule tokens
are a compatibility contract (an upstream plugin, CHECK, or an operator's
scripts must find the same rules).  Rules are token lists (``list[str]``) in
upstream's order; :func:`restore_line` renders one for ``iptables-restore``.

Chains in table ``nat`` (§3.2):

- ``CNI-HOSTPORT-DNAT``: jumped to from ``PREROUTING`` and ``OUTPUT`` with
  ``-m addrtype --dst-type LOCAL``; holds the per-container *entry rules*
  (``-m comment --comment 'dnat name: "<net>" id: "<cid>"' -m multiport -p
  <proto> --destination-ports <ports> [conditions] -j CNI-DN-<hash>``).
- ``CNI-DN-<hash>`` (one per network+container, §3.3): mark rules and DNAT.
- ``CNI-HOSTPORT-SETMARK`` / ``CNI-HOSTPORT-MASQ`` (``snat`` and no
  ``externalSetMarkChain``, §3.7), ``POSTROUTING`` jump inserted at position 1.
- ``CNI-SN-<hash>`` / ``CNI-HOSTPORT-SNAT``: legacy (pre-2017), only removed.

How the restore texts are built (verified on iptables 1.8.9, both the
``nf_tables`` and the ``legacy`` flavour, see tests/integration/test_ipt_backend.py):

- With ``--noflush``, a chain declaration ``:CHAIN - [0:0]`` creates the
  chain, and **flushes it if it already exists** (even while referenced).
  So only the per-container chain is declared: ADD replaces it wholesale
  (re-ADD replaces, where upstream appends missing rules and keeps stale ones).
- Shared chains are created with ``-N`` (fails, atomically, if the chain
  exists -- it never flushes), and only when the ``iptables-save`` read taken
  just before shows them absent; their rules are appended only when the same
  read shows them absent (upstream's "insert unique").  A concurrent writer
  between read and restore makes the restore fail as a whole; the backend
  re-reads and retries.
- ``:CHAIN - [0:0]`` followed by ``-X CHAIN`` deletes a chain whether or not
  it had rules; ``-X`` of a chain that does not exist fails the restore.
- ``-D CHAIN <spec>`` with ``<spec>`` exactly as ``iptables-save`` printed it
  deletes that rule (the save format round-trips).
- ``-C`` lines work inside ``iptables-restore`` (exit 1, stderr ``line N
  failed``); ``--test`` does *not* evaluate them with the nf_tables flavour.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .names import DN_PREFIX, MAX_CHAIN_NAME, chain_name, dn_chain, sn_chain

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Sequence
    from typing import TypeAlias

    from ..plan import Forward, Plan

    #: (chain, tokens, insert first?): a shared rule to ensure
    SharedRule: TypeAlias = tuple[str, Sequence[str], bool]

__all__ = [
    "COMMENT_MAX",
    "DNAT_CHAIN",
    "GUARD_TABLE",
    "LOCALNET_CHAIN",
    "MASQ_CHAIN",
    "MASQ_JUMP_COMMENT",
    "MAX_CHAIN_NAME",
    "MULTIPORT_MAX",
    "SETMARK_CHAIN",
    "SETMARK_COMMENT",
    "SNAT_CHAIN",
    "TABLE",
    "TOPLEVEL_ENTRY_CHAINS",
    "ContainerChain",
    "DnatRule",
    "NatTable",
    "Snapshot",
    "add_lines",
    "chain_name",
    "check_lines",
    "conflicts",
    "container_chain",
    "container_rules",
    "delete_jump_lines",
    "dn_chain",
    "dnat_comment",
    "dnat_target",
    "entry_match_rules",
    "guard_lines",
    "guard_objects",
    "installed",
    "jump_target",
    "mark_spec",
    "masq_rule",
    "parse_dnat_comment",
    "parse_dnat_rule",
    "parse_save",
    "postrouting_jump",
    "quote",
    "restore_line",
    "restore_text",
    "setmark_rule",
    "shared_objects",
    "sn_chain",
    "split_rule",
    "teardown_lines",
    "text_safe",
    "toplevel_jump",
    "undo_lines",
    "undo_shared_lines",
]

#: All rules live in table ``nat`` (§3.1).
TABLE = "nat"
#: Top-level chains: names are a compatibility contract (§3.2).
DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
SNAT_CHAIN = "CNI-HOSTPORT-SNAT"
#: Our own (not upstream's) IPv4 localnet guard: table, chain and comments (:func:`guard_objects`).
GUARD_TABLE = "raw"
LOCALNET_CHAIN = "CNI-HOSTPORT-LOCALNET"
LOCALNET_JUMP_COMMENT = "CNI portfwd localnet guard"
LOCALNET_COMMENT = "CNI portfwd: drop 127.0.0.0/8 from non-loopback interfaces"
#: legacy entry chains of CNI-SN-<hash> (§3.2, §3.9)
TOPLEVEL_ENTRY_CHAINS = ("PREROUTING", "OUTPUT")
#: ``-m multiport`` takes at most 15 ports (§3.5).
MULTIPORT_MAX = 15
#: The ``comment`` match accepts at most 255 characters (§3.5, §6 item 19).
COMMENT_MAX = 255
#: Comments of the shared rules (§3.7).
SETMARK_COMMENT = "CNI portfwd masquerade mark"
MASQ_JUMP_COMMENT = "CNI portfwd requiring masquerade"


# --------------------------------------------------------------------- names
# chain_name, dn_chain, sn_chain: nlportmap.ipt.names (imported above)


def mark_spec(bit: int) -> str:
    """``<hex>/<hex>`` of ``1 << bit``, lower-case, unpadded: 13 -> ``0x2000/0x2000`` (§2.6).

    Raises ValueError outside 0..31.
    """
    if not 0 <= bit <= 31:
        raise ValueError(f"MasqMarkBit must be between 0 and 31 (got {bit})")
    v = f"{1 << bit:#x}"
    return f"{v}/{v}"


def _goq(s: str) -> str:
    """Go's ``%q`` for the printable ASCII that CNI names and IDs consist of."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dnat_comment(network: str, container_id: str) -> str:
    """``dnat name: "<net>" id: "<cid>"`` (§3.5).

    Longer than :data:`COMMENT_MAX` (255): cut to 252 characters + ``...`` = 255.
    Deviation: upstream cuts to 253 + ``...`` = 256, which iptables rejects
    (§6 item 19), so such an ADD fails upstream and works here.
    """
    c = f"dnat name: {_goq(network)} id: {_goq(container_id)}"
    if len(c) > COMMENT_MAX:
        c = c[:COMMENT_MAX - 3] + "..."
    return c


_COMMENT_RE = re.compile(r'^dnat name: "((?:[^"\\]|\\.)*)" id: "((?:[^"\\]|\\.)*)"$')


def parse_dnat_comment(comment: str | None) -> tuple[str, str] | None:
    """(network, container_id) from an entry-rule comment; None if not ours or cut short."""
    if not comment:
        return None
    m = _COMMENT_RE.match(comment)
    if not m:
        return None
    unq = [re.sub(r"\\(.)", r"\1", g) for g in m.groups()]
    return unq[0], unq[1]


# --------------------------------------------------------------------- rules
def setmark_rule(bit: int) -> list[str]:
    """The one rule of ``CNI-HOSTPORT-SETMARK`` (§3.7)."""
    return ["-m", "comment", "--comment", SETMARK_COMMENT, "-j", "MARK", "--set-xmark", mark_spec(bit)]


def masq_rule(bit: int) -> list[str]:
    """The one rule of ``CNI-HOSTPORT-MASQ`` (§3.7)."""
    return ["-m", "mark", "--mark", mark_spec(bit), "-j", "MASQUERADE"]


def postrouting_jump() -> list[str]:
    """``POSTROUTING`` -> ``CNI-HOSTPORT-MASQ``, inserted at position 1 (§3.2, §3.7)."""
    return ["-m", "comment", "--comment", MASQ_JUMP_COMMENT, "-j", MASQ_CHAIN]


def toplevel_jump() -> list[str]:
    """``PREROUTING``/``OUTPUT`` -> ``CNI-HOSTPORT-DNAT``, appended (§3.2)."""
    return ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN]


def dnat_target(family: int, ip: str, port: int) -> str:
    """``10.0.0.2:80`` / ``[2001:db8::2]:80`` (§3.6 step 3)."""
    return f"[{ip}]:{port}" if family == 6 else f"{ip}:{port}"


def container_rules(family: int, forwards: Iterable[Forward], *, snat: bool, masq_all: bool,
                    container_cidr: str, mark_chain: str) -> list[list[str]]:
    """The rules of ``CNI-DN-<hash>`` for one family, in order (§3.6).

    ``forwards``: :class:`nlportmap.plan.Forward` objects of this family (already
    hostIP-filtered).  ``container_cidr``: the container address with prefix as
    found in prevResult (``10.0.0.2/24``), used verbatim for the hairpin ``-s``.
    ``mark_chain``: ``CNI-HOSTPORT-SETMARK`` or the externalSetMarkChain.
    Per forward: hairpin mark (if snat; source ``0.0.0.0/0``/``::/0`` with
    masqAll), IPv4 localhost mark (if snat, not masqAll), DNAT.
    """
    out: list[list[str]] = []
    src = ("0.0.0.0/0" if family == 4 else "::/0") if masq_all else container_cidr
    for f in forwards:
        if f.family != family:
            continue
        base = ["-p", f.proto, "--dport", str(f.host_port)]
        if f.host_ip:
            base += ["-d", f.host_ip]
        if snat:
            out.append([*base, "-s", src, "-j", mark_chain])
            if family == 4 and not masq_all:
                out.append([*base, "-s", "127.0.0.1", "-j", mark_chain])
        out.append([*base, "-j", "DNAT", "--to-destination", dnat_target(family, f.container_ip, f.container_port)])
    return out


def _mget(m: object, key: str) -> object:
    return m.get(key) if isinstance(m, dict) else getattr(m, key, None)


def entry_match_rules(mappings: Iterable[object], network: str, container_id: str,
                      conditions: list[str] | None) -> list[list[str]]:
    """Entry-rule matches (without ``-j``) for ``CNI-HOSTPORT-DNAT`` (§3.5).

    ``mappings``: **all** port mappings of the config (objects or dicts with
    ``protocol`` and ``hostPort``), including those whose hostIP is of the other
    family.  Grouped by the raw protocol string, protocols sorted, ports in
    mapping order (duplicates kept), chunks of at most 15 ports; the family's
    condition tokens are appended verbatim when the list is non-empty.
    """
    groups: dict[str, list[str]] = {}
    for m in mappings:
        groups.setdefault(str(_mget(m, "protocol")), []).append(str(_mget(m, "hostPort")))
    comment = dnat_comment(network, container_id)
    out: list[list[str]] = []
    for proto in sorted(groups):
        ports = groups[proto]
        for i in range(0, len(ports), MULTIPORT_MAX):
            r = ["-m", "comment", "--comment", comment, "-m", "multiport", "-p", proto,
                 "--destination-ports", ",".join(ports[i:i + MULTIPORT_MAX])]
            if conditions:
                r += list(conditions)
            out.append(r)
    return out


@dataclass(frozen=True)
class ContainerChain:
    """What one container needs in one family: its chain, rules and entry rules.

    ``entry_rules`` already end in ``-j <name>``.  ``snat`` and ``external_mark_chain``
    decide whether the SETMARK/MASQ chains are needed; ``mark_bit`` their mark.
    """

    family: int
    name: str
    rules: tuple[tuple[str, ...], ...]
    entry_rules: tuple[tuple[str, ...], ...]
    snat: bool = True
    external_mark_chain: str | None = None
    mark_bit: int = 13

    @property
    def needs_mark_chains(self) -> bool:
        """SETMARK/MASQ are created when snat and no externalSetMarkChain (§3.4 step 2)."""
        return self.snat and not self.external_mark_chain


def container_chain(plan: Plan, family: int) -> ContainerChain:
    """Build the :class:`ContainerChain` of ``plan`` (a :class:`nlportmap.plan.Plan`) for ``family``."""
    o = plan.owner
    name = dn_chain(o.network, o.container_id)
    fws = [f for f in plan.forwards if f.family == family]
    cidr = plan.container_cidrs.get(family) or (fws[0].container_ip if fws else "")
    mark_chain = plan.external_mark_chain or SETMARK_CHAIN
    rules = container_rules(family, fws, snat=plan.snat, masq_all=plan.masq_all,
                            container_cidr=cidr, mark_chain=mark_chain)
    conds = (plan.raw_conditions or {}).get(family)
    entries = [[*r, "-j", name] for r in entry_match_rules(plan.all_mappings, o.network, o.container_id, conds)]
    return ContainerChain(family, name, tuple(tuple(r) for r in rules), tuple(tuple(r) for r in entries),
                          plan.snat, plan.external_mark_chain, plan.mark_bit)


# ------------------------------------------------------------ restore syntax
_NEEDS_QUOTE = re.compile(r'[\s"\'\\#]')


def quote(tok: str) -> str:
    """One token for ``iptables-restore``: double-quoted (``\\`` and ``"`` escaped)
    when empty or containing whitespace, quotes, ``\\`` or ``#``.

    Raises ValueError for a newline or NUL (a restore line cannot carry them).
    """
    if "\n" in tok or "\r" in tok or "\0" in tok:
        raise ValueError(f"token {tok!r} contains a line break or NUL")
    if tok and not _NEEDS_QUOTE.search(tok):
        return tok
    return '"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"'


def restore_line(op: str, chain: str, tokens: Iterable[str] = (), pos: int | None = None) -> str:
    """``-A CHAIN tok...`` / ``-I CHAIN <pos> tok...`` / ``-D`` / ``-C`` / ``-N`` / ``-X``."""
    parts = [op, chain] + ([str(pos)] if pos is not None else []) + [quote(t) for t in tokens]
    return " ".join(parts)


def restore_text(lines: list[str], table: str = TABLE) -> str:
    """A complete ``iptables-restore --noflush`` input for one table (one COMMIT: atomic)."""
    return f"*{table}\n" + "".join(ln + "\n" for ln in lines) + "COMMIT\n"


def split_rule(spec: str) -> list[str]:
    """Tokens of a rule as ``iptables-save`` prints it.

    Whitespace separates tokens outside double quotes; ``\\x`` stands for ``x``
    (save escapes ``"``, ``'`` and ``\\`` that way).  ``shlex`` is not used
    because it keeps ``\\'`` inside double quotes.
    """
    out: list[str] = []
    cur: list[str] = []
    have = inq = False
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        if c == "\\" and i + 1 < n:
            cur.append(spec[i + 1])
            have = True
            i += 2
            continue
        if c == '"':
            inq = not inq
            have = True
        elif c.isspace() and not inq:
            if have:
                out.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if have:
        out.append("".join(cur))
    return out


# ------------------------------------------------------------ saved state
@dataclass
class NatTable:
    """The ``nat`` table as read by ``iptables-save -t nat``.

    ``chains``: chain name -> rule specs in order, each the text after
    ``-A <chain> `` exactly as printed (usable verbatim in ``-D``).
    """

    chains: dict[str, list[str]] = field(default_factory=dict)

    def has_chain(self, name: str) -> bool:
        return name in self.chains

    def rules(self, chain: str) -> list[str]:
        return self.chains.get(chain, [])

    def matching(self, chain: str, tokens: Iterable[str]) -> list[str]:
        """Saved specs in ``chain`` whose tokens are exactly ``tokens`` (as save prints them)."""
        t = list(tokens)
        return [s for s in self.rules(chain) if split_rule(s) == t]

    def has_rule(self, chain: str, tokens: Iterable[str]) -> bool:
        """Is a rule with exactly these tokens (as save prints them) in ``chain``?"""
        return bool(self.matching(chain, tokens))

    def referrers(self, target: str) -> list[tuple[str, str]]:
        """(chain, spec) of every rule whose verdict is ``-j <target>`` / ``-g <target>``.

        Found on the saved text itself (:func:`jump_target`), not on its tokens: a
        rule with an unquoted ``"`` (an interface name, say) is still found.
        """
        return [(c, s) for c, specs in self.chains.items() for s in specs if jump_target(s) == target]

    def referrers_at(self, target: str) -> list[tuple[str, int, str]]:
        """(chain, 1-based position, spec) of every rule jumping to ``target``."""
        return [(c, i, s) for c, specs in self.chains.items() for i, s in enumerate(specs, 1)
                if jump_target(s) == target]


_JUMP_RE = re.compile(r"(?:^|\s)(?:-j|-g|--jump|--goto) ([^\s\"'\\]+)$")


def jump_target(spec: str) -> str | None:
    """The chain a saved rule jumps to (its last ``-j``/``-g`` with no target options),
    read from the raw text: iptables-save prints interface names and other tokens
    unquoted, so a rule holding a ``"`` or ``\\`` does not split into tokens reliably,
    but its verdict is always last."""
    m = _JUMP_RE.search(spec)
    return m.group(1) if m else None


_QUOTED_TOKEN = re.compile(r'(?:^|(?<=\s))"(?:[^"\\]|\\.)*"(?=\s|$)')


def text_safe(spec: str) -> bool:
    """Can ``spec`` (as iptables-save printed it) be fed back to ``iptables-restore``
    verbatim (``-D CHAIN <spec>``)?  No when, outside whole quoted tokens (comments,
    which save escapes), it holds a ``"`` or ``\\``: save prints e.g. ``-i eth0"x``
    unescaped, and restore's parser would read a quote there."""
    rest = _QUOTED_TOKEN.sub(" ", spec)
    return '"' not in rest and "\\" not in rest and "'" not in rest


@dataclass
class Snapshot:
    """What one ADD of one family reads and may write: table ``nat``, and for IPv4 table
    ``raw`` (the localnet guard; None for IPv6)."""

    nat: NatTable
    raw: NatTable | None = None


def parse_save(text: str, table: str = TABLE) -> NatTable:
    """Parse ``iptables-save`` output; only table ``table`` is kept.

    A missing table (no ``*nat`` section) gives an empty :class:`NatTable`.
    """
    nt = NatTable()
    cur = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = line[1:]
            continue
        if cur != table:
            continue
        if line.startswith(":"):
            nt.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            nt.chains.setdefault(parts[1], []).append(parts[2] if len(parts) > 2 else "")
    return nt


@dataclass(frozen=True, slots=True)
class DnatRule:
    """A DNAT rule of a ``CNI-DN-`` chain, as read back."""

    proto: str
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int


def _bare(addr: str) -> str | None:
    """``192.168.1.10/32`` -> ``192.168.1.10``; a real prefix stays (it is not a host IP)."""
    try:
        n = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        return addr
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return str(n)


def parse_dnat_rule(spec: str) -> DnatRule | None:
    """Parse a saved ``... -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80``.

    Returns None for anything that is not a DNAT rule of this shape (mark rules,
    port ranges, negations, foreign rules).
    """
    t = split_rule(spec)
    try:
        if t[t.index("-j") + 1] != "DNAT":
            return None
    except (ValueError, IndexError):
        return None
    opts: dict[str, str] = {}
    i = 0
    while i < len(t):
        if t[i] == "!":
            return None
        if t[i] in ("-p", "-d", "--dport", "--to-destination") and i + 1 < len(t):
            opts[t[i]] = t[i + 1]
            i += 2
            continue
        i += 1
    if not {"-p", "--dport", "--to-destination"} <= opts.keys() or not opts["--dport"].isdigit():
        return None
    dest = opts["--to-destination"]
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", dest) or re.match(r"^([^:\[\]]+):(\d+)$", dest)
    if not m:
        return None
    hip = _bare(opts["-d"]) if "-d" in opts else None
    return DnatRule(opts["-p"], hip, int(opts["--dport"]), m.group(1), int(m.group(2)))


def installed(nt: NatTable) -> list[tuple[str, tuple[str, str] | None, list[DnatRule]]]:
    """Every ``CNI-DN-`` chain: (name, (network, container_id) from its entry rule or None, DNAT rules)."""
    owners: dict[str, tuple[str, str]] = {}
    for spec in nt.rules(DNAT_CHAIN):
        target = jump_target(spec)
        if not (target and target.startswith(DN_PREFIX)):
            continue
        t = split_rule(spec)
        if "--comment" in t:
            i = t.index("--comment")
            who = parse_dnat_comment(t[i + 1] if i + 1 < len(t) else None)
            if who:
                owners.setdefault(target, who)
    out = []
    for name in nt.chains:
        if name.startswith(DN_PREFIX):
            rules = [r for r in (parse_dnat_rule(s) for s in nt.rules(name)) if r]
            out.append((name, owners.get(name), rules))
    return out


# ------------------------------------------------------------ restore bodies
def shared_objects(cc: ContainerChain) -> tuple[list[str], list[tuple[str, list[str], bool]]]:
    """(shared chains, shared rules as (chain, tokens, insert-first)) that ``cc`` needs in
    table ``nat``, in the order :func:`add_lines` ensures them."""
    chains: list[str] = []
    rules: list[tuple[str, list[str], bool]] = []
    if cc.needs_mark_chains:
        chains += [SETMARK_CHAIN, MASQ_CHAIN]
        rules += [(SETMARK_CHAIN, setmark_rule(cc.mark_bit), False), (MASQ_CHAIN, masq_rule(cc.mark_bit), False),
                  ("POSTROUTING", postrouting_jump(), True)]
    chains.append(DNAT_CHAIN)
    rules += [(ec, toplevel_jump(), False) for ec in TOPLEVEL_ENTRY_CHAINS]
    return chains, rules


def _ensure(L: list[str], nt: NatTable, chains: Iterable[str], rules: Iterable[SharedRule]) -> None:
    """Append lines creating the absent ``chains`` and the ``rules`` ("insert unique").

    Each chain is created (``-N``) just before its first rule; duplicates of a
    rule (left by two writers racing between their check and their append --
    upstream's own race too) are healed: all copies deleted by their saved text,
    one re-added.
    """
    pending = [c for c in chains if not nt.has_chain(c)]
    for chain, tokens, first in rules:
        for c in [c for c in pending if c in (chain, tokens[-1])]:  # the rule is in it or jumps to it
            L.append(restore_line("-N", c))
            pending.remove(c)
        have = nt.matching(chain, tokens)
        if len(have) == 1:
            continue
        L.extend(f"-D {chain} {s}" for s in have)
        L.append(restore_line("-I", chain, tokens, pos=1) if first else restore_line("-A", chain, tokens))
    L.extend(restore_line("-N", c) for c in pending)


def add_lines(cc: ContainerChain, nt: NatTable, *, front: bool = False) -> list[str]:
    """Restore lines (without ``*nat``/``COMMIT``) that install ``cc`` on top of ``nt``.

    Order: SETMARK/MASQ chains and rules and the POSTROUTING jump (if needed and
    absent; duplicated copies are collapsed into one), ``CNI-HOSTPORT-DNAT`` and
    its PREROUTING/OUTPUT jumps (same),
    the per-container chain declared (created or flushed) and filled, old entry
    rules jumping to it deleted, then the new entry rules: appended (upstream),
    or inserted at the top of ``CNI-HOSTPORT-DNAT`` with ``front`` (so this
    container wins a host port another chain also claims).  One restore of these
    lines is atomic: the chain is complete before it becomes reachable.
    """
    L: list[str] = []
    _ensure(L, nt, *shared_objects(cc))
    L.append(f":{cc.name} - [0:0]")
    L += [restore_line("-A", cc.name, r) for r in cc.rules]
    L += delete_jump_lines(NatTable({DNAT_CHAIN: nt.rules(DNAT_CHAIN)}), [cc.name])
    for i, r in enumerate(cc.entry_rules, 1):
        L.append(restore_line("-I", DNAT_CHAIN, r, pos=i) if front else restore_line("-A", DNAT_CHAIN, r))
    return L


# ------------------------------------------------------------ localnet guard (table raw, IPv4)
def guard_objects() -> tuple[list[str], list[tuple[str, list[str], bool]]]:
    """(chains, rules) of the localnet guard in table :data:`GUARD_TABLE` (IPv4 only).

    ``PREROUTING`` (inserted first) jumps to :data:`LOCALNET_CHAIN`, which drops
    packets to 127.0.0.0/8 that did not arrive on ``lo`` -- before conntrack and
    before any DNAT, so a mapping on hostIP 127.0.0.1 (and any node service bound
    to localhost, reachable once ``route_localnet=1``) cannot be reached from
    another machine or a pod (CVE-2020-8558).  Mirrors the nft backend's
    ``localnet_guard``.  Tokens are in iptables-save's order (idempotence).
    """
    rules = [("PREROUTING", ["-m", "comment", "--comment", LOCALNET_JUMP_COMMENT, "-j", LOCALNET_CHAIN], True),
             (LOCALNET_CHAIN, ["-d", "127.0.0.0/8", "!", "-i", "lo", "-m", "comment", "--comment",
                               LOCALNET_COMMENT, "-j", "DROP"], False)]
    return [LOCALNET_CHAIN], rules


def guard_lines(raw: NatTable) -> list[str]:
    """Restore lines (table ``raw``) installing the localnet guard; empty if it is in place."""
    L: list[str] = []
    chains, rules = guard_objects()
    _ensure(L, raw, chains, rules[1:] + rules[:1])  # the chain's rule before the jump to it
    return L


def undo_shared_lines(before: NatTable, now: NatTable, chains: Iterable[str], rules: Iterable[SharedRule], *,
                      gone: Iterable[tuple[str, str]] = (), gone_chains: Iterable[str] = ()) -> list[str]:
    """Restore lines removing the shared ``rules`` and ``chains`` that ``now`` has and
    ``before`` had not (what one ADD created); chains only if nothing else is in or
    jumps to them once those rules are gone.  ``gone``: (chain, spec) rules the caller
    removes in the same restore; ``gone_chains``: chains it deletes (their rules do
    not count as references)."""
    L: list[str] = []
    removed = set(gone) | {(c, sp) for c in gone_chains for sp in now.rules(c)}
    for chain, tokens, _ in rules:
        if before.matching(chain, tokens):
            continue
        for spec in now.matching(chain, tokens):
            L.append(f"-D {chain} {spec}")
            removed.add((chain, spec))
    for c in chains:
        if before.has_chain(c) or not now.has_chain(c):
            continue
        left = [sp for sp in now.rules(c) if (c, sp) not in removed]
        refs = [r for r in now.referrers(c) if r not in removed]
        if not left and not refs:
            L += [f":{c} - [0:0]", restore_line("-X", c)]
    return L


def undo_lines(cc: ContainerChain, before: NatTable, now: NatTable) -> list[str]:
    """Restore lines (table ``nat``) putting back what ``before`` held for ``cc``'s
    container, undoing one ADD that committed ``cc`` (``now`` read after it).

    The container's entry rules in ``now`` are deleted; its chain is re-declared
    with the rules ``before`` had (saved text, verbatim) and its old entry rules are
    re-inserted at their old positions, or, if ``before`` had no such chain, the
    chain is deleted; then the shared chains and rules this ADD created are removed
    (:func:`undo_shared_lines`).  Empty if ``now`` already equals ``before`` there.
    """
    L: list[str] = []
    gone_chains = set() if before.has_chain(cc.name) else {cc.name}
    if now.has_chain(cc.name) or now.referrers(cc.name):
        L += delete_jump_lines(now, [cc.name])
        if before.has_chain(cc.name):
            L.append(f":{cc.name} - [0:0]")
            L += [f"-A {cc.name} {spec}" for spec in before.rules(cc.name)]
            for chain, pos, spec in sorted(before.referrers_at(cc.name), key=lambda r: (r[0], r[1])):
                L.append(f"-I {chain} {pos} {spec}")
        elif now.has_chain(cc.name):
            L += [f":{cc.name} - [0:0]", restore_line("-X", cc.name)]
    L += undo_shared_lines(before, now, *shared_objects(cc), gone=now.referrers(cc.name), gone_chains=gone_chains)
    return L


def delete_jump_lines(nt: NatTable, targets: Iterable[str]) -> list[str]:
    """Restore lines deleting every rule of ``nt`` that jumps to one of ``targets``.

    By saved text (``-D CHAIN <spec>``) when the text can be fed back verbatim
    (:func:`text_safe`), else by position (``-D CHAIN <n>``, from this read; the
    caller holds the netns lock, and these rules live in portmap's own chains,
    where other writers only append).  Positional deletes come first, highest
    position first per chain, so each number still points at the rule read.
    Rules installed before tokens were validated (an unquoted ``"`` in an
    interface name) can so always be removed: DEL never wedges on them.
    """
    by_pos: list[tuple[str, int]] = []
    by_text: list[str] = []
    for t in dict.fromkeys(targets):
        for src, pos, spec in nt.referrers_at(t):
            if text_safe(spec):
                by_text.append(f"-D {src} {spec}")
            else:
                by_pos.append((src, pos))
    by_pos.sort(key=lambda cp: (cp[0], -cp[1]))
    return [f"-D {c} {p}" for c, p in by_pos] + by_text


def teardown_lines(nt: NatTable, chains: Iterable[str]) -> list[str]:
    """Restore lines removing ``chains`` (those that exist) and every rule jumping to them.

    Empty if there is nothing to remove.  Jumps are deleted first
    (:func:`delete_jump_lines`), then each chain is declared (flushed) and
    deleted with ``-X``.
    """
    doomed = list(dict.fromkeys(chains))
    L = delete_jump_lines(nt, doomed)
    for c in doomed:
        if nt.has_chain(c):
            L += [f":{c} - [0:0]", restore_line("-X", c)]
    return L


def check_lines(cc: ContainerChain) -> list[tuple[str, str, str]]:
    """``-C`` lines for CHECK: [(chain, rule as text, restore line)].

    Container rules, then entry rules (what upstream checks, §3.10), then the
    PREROUTING/OUTPUT jumps and, if needed, the SETMARK/MASQ rules and the
    POSTROUTING jump (upstream does not check those; a missing one breaks
    forwarding or hairpin masquerade, so we do).
    """
    out: list[tuple[str, str, str]] = []

    def add(chain: str, tokens: Iterable[str]) -> None:
        ln = restore_line("-C", chain, tokens)
        out.append((chain, ln[len("-C ") + len(chain) + 1:], ln))

    for r in cc.rules:
        add(cc.name, r)
    for r in cc.entry_rules:
        add(DNAT_CHAIN, r)
    for ec in TOPLEVEL_ENTRY_CHAINS:
        add(ec, toplevel_jump())
    if cc.needs_mark_chains:
        add(SETMARK_CHAIN, setmark_rule(cc.mark_bit))
        add(MASQ_CHAIN, masq_rule(cc.mark_bit))
        add("POSTROUTING", postrouting_jump())
    return out


def conflicts(cc: ContainerChain, forwards: Iterable[Forward],
              nt: NatTable) -> list[tuple[Forward, str, tuple[str, str] | None]]:
    """Host ports of ``forwards`` that another ``CNI-DN-`` chain already DNATs.

    Returns [(forward, other chain, (network, container_id) of its owner or None)].
    Same key = same protocol, port and hostIP (None = any address), like the
    nftables backend's keys.
    """
    mine = {(f.proto, f.host_ip, f.host_port): f for f in forwards if f.family == cc.family}
    out: list[tuple[Forward, str, tuple[str, str] | None]] = []
    for name, who, rules in installed(nt):
        if name == cc.name:
            continue
        for r in rules:
            f = mine.get((r.proto, r.host_ip, r.host_port))
            if f is not None:
                out.append((f, name, who))
    return out
