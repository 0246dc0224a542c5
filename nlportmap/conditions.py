"""Parse nftables-style ``conditionsV4`` / ``conditionsV6`` into :class:`Match` objects.

Upstream joins the condition tokens with single spaces and pastes the text in
front of ``fib daddr type local`` in its ``prerouting``/``output`` rules
(reference portmap-behaviour.md §2.4, §4.6).  We program nftables over
netlink, so instead of pasting text we accept a documented subset of the nft
expression language and turn it into data the backend can encode.

Grammar (tokens are whitespace separated after joining the list with spaces;
``{``, ``}``, ``,``, ``==`` and ``!=`` are tokens of their own, so
``{10.0.0.1,10.0.0.2}`` and ``{ 10.0.0.1, 10.0.0.2 }`` are the same)::

    conditions := clause*                      -- clauses are ANDed
    clause     := addr-match | name-match
    addr-match := FAMILY ("saddr" | "daddr") [op] addr-value
    FAMILY     := "ip"  (only in conditionsV4) | "ip6" (only in conditionsV6)
    name-match := ["meta"] ("iifname" | "oifname") [op] name-value
    op         := "==" | "!="                  -- default "=="
    addr-value := ADDR | "{" ADDR ("," ADDR)* [","] "}"
    name-value := NAME | "{" NAME ("," NAME)* [","] "}"
    ADDR       := address | address "/" prefixlen   -- of the clause's family
    NAME       := bare or "double-quoted" interface name: 1..15 bytes,
                  optionally followed by one "*" wildcard; no "/", ":",
                  whitespace, "." or ".."; "*" only at the end

Values of one set are ORed (set membership); ``!=`` negates the whole set.
Address values are canonicalised with ``ipaddress.ip_network(strict=False)``
(host bits cleared, ``/32`` or ``/128`` added); duplicates are removed, order
is kept, overlapping prefixes are left as given (a backend building an
interval set must merge them, e.g. with ``ipaddress.collapse_addresses``).

Anything else -- other keywords (``tcp``, ``iif``, ``ct``, ...), address
ranges, a family keyword in the wrong list, a bad or wrong-family address, an
empty set -- raises :class:`nlportmap.errors.InvalidConfig` naming the list
(``conditionsV4``/``conditionsV6``) and the offending token.

Pure: imports ``re`` and ``ipaddress`` only when there is something to parse.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidConfig

__all__ = ["ADDR_FIELDS", "IFNAME_MAX", "NAME_FIELDS", "Match", "parse_conditions"]

#: Address fields (matched against the IPv4/IPv6 header).
ADDR_FIELDS = ("saddr", "daddr")
#: Interface-name fields (nft ``meta iifname`` / ``meta oifname``).
NAME_FIELDS = ("iifname", "oifname")
#: Longest interface name in bytes: IFNAMSIZ (16, include/uapi/linux/if.h) minus the NUL.
IFNAME_MAX = 15

_FAMILY_KEYWORD = {4: "ip", 6: "ip6"}


@dataclass(frozen=True, slots=True)
class Match:
    """One condition clause: ``field`` (not) in ``values``.

    ``field``: ``'saddr'`` | ``'daddr'`` | ``'iifname'`` | ``'oifname'``.
    ``negate``: ``True`` for ``!=``.
    ``values``: for ``saddr``/``daddr`` canonical network strings
    (``'10.0.0.0/8'``, ``'10.1.2.3/32'``, ``'fd00::/64'``), all of one family;
    for interface names the names themselves (at most 15 bytes, optionally
    ending in a single ``*`` meaning "any name with this prefix").
    A tuple of more than one value is an anonymous set.
    """

    field: str
    negate: bool
    values: tuple[str, ...]

    @property
    def family(self) -> int | None:
        """4 or 6 for address matches, ``None`` for interface-name matches."""
        if self.field not in ADDR_FIELDS or not self.values:
            return None
        return 6 if ":" in self.values[0] else 4

    def __str__(self) -> str:
        if self.field in ADDR_FIELDS:
            head = f"{_FAMILY_KEYWORD[self.family or 4]} {self.field}"
            vals = list(self.values)
        else:
            head = self.field
            vals = [f'"{v}"' for v in self.values]
        if self.negate:
            head += " !="
        body = vals[0] if len(vals) == 1 else "{ " + ", ".join(vals) + " }"
        return f"{head} {body}"


def _supported(family: int) -> str:
    return (f"supported: {_FAMILY_KEYWORD[family]} saddr/daddr, iifname, oifname "
            f"with == or !=, anonymous sets")


_TOKEN_RE = None


def _tokenize(text: str) -> list[str]:
    global _TOKEN_RE
    if _TOKEN_RE is None:
        import re
        # quoted string (possibly unterminated), punctuation, operators, a lone
        # '!' or '=', or a run of anything else.  Every non-space character is
        # covered by one alternative, so nothing is silently skipped.
        _TOKEN_RE = re.compile(r'"[^"]*"?|[{},]|==|!=|[!=]|[^\s{},"!=]+')
    return _TOKEN_RE.findall(text)


class _Parser:
    def __init__(self, tokens: list[str], family: int) -> None:
        self.toks = tokens
        self.pos = 0
        self.family = family
        self.where = f"conditionsV{family}"

    def fail(self, what: str) -> InvalidConfig:
        return InvalidConfig(f"{self.where}: {what}")

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, after: str) -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail(f'missing value after "{after}"')
        self.pos += 1
        return tok

    def unsupported(self, tok: str) -> InvalidConfig:
        return self.fail(f'unsupported token "{tok}" ({_supported(self.family)})')

    def parse(self) -> tuple[Match, ...]:
        out: list[Match] = []
        while self.peek() is not None:
            out.append(self.clause())
        return tuple(out)

    def clause(self) -> Match:
        tok = self.take("")
        if tok == "meta":
            tok = self.take("meta")
            if tok not in NAME_FIELDS:
                raise self.unsupported(tok)
        if tok in ("ip", "ip6"):
            want = _FAMILY_KEYWORD[self.family]
            if tok != want:
                other = 6 if self.family == 4 else 4
                raise self.fail(f'"{tok}" matches IPv{other} packets and is not allowed here '
                                f'(use "{want}" in conditionsV{self.family}, '
                                f'"{tok}" in conditionsV{other})')
            field = self.take(tok)
            if field not in ADDR_FIELDS:
                raise self.unsupported(field)
            label = f"{tok} {field}"
        elif tok in NAME_FIELDS:
            field = tok
            label = tok
        else:
            raise self.unsupported(tok)
        negate = False
        if self.peek() in ("==", "!="):
            negate = self.take(label) == "!="
            label += " !=" if negate else " =="
        raw = self.value_tokens(label)
        if field in ADDR_FIELDS:
            values = tuple(dict.fromkeys(self.address(v, label) for v in raw))
        else:
            values = tuple(dict.fromkeys(self.ifname(v, label) for v in raw))
        return Match(field, negate, values)

    def value_tokens(self, label: str) -> list[str]:
        tok = self.take(label)
        if tok != "{":
            self.check_value_token(tok, label)
            return [tok]
        vals: list[str] = []
        while True:
            item = self.peek()
            if item is None:
                raise self.fail(f'unterminated set after "{label}" (missing "}}")')
            tok = item
            self.pos += 1
            if tok == "}":
                break
            self.check_value_token(tok, label)
            vals.append(tok)
            sep = self.peek()
            if sep == ",":
                self.pos += 1
            elif sep != "}":
                shown = "end of conditions" if sep is None else f'"{sep}"'
                raise self.fail(f'expected "," or "}}" after "{tok}" in set after "{label}", got {shown}')
        if not vals:
            raise self.fail(f'empty set after "{label}"')
        return vals

    def check_value_token(self, tok: str, label: str) -> None:
        if tok in ("{", "}", ",", "==", "!=", "!", "="):
            raise self.fail(f'unexpected "{tok}" after "{label}" (expected a value)')

    def address(self, tok: str, label: str) -> str:
        import ipaddress
        import re
        kind = f"IPv{self.family}"
        bad = self.fail(f'invalid {kind} address or prefix "{tok}" after "{label}"')
        if "%" in tok or not re.fullmatch(r"[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?", tok):
            raise bad
        try:
            net = ipaddress.ip_network(tok, strict=False)
        except ValueError:
            raise bad from None
        if net.version != self.family:
            raise self.fail(f'"{tok}" after "{label}" is an IPv{net.version} address; '
                            f'conditionsV{self.family} needs {kind}')
        return str(net)

    def ifname(self, tok: str, label: str) -> str:
        if tok.startswith('"'):
            if len(tok) < 2 or not tok.endswith('"'):
                raise self.fail(f"unterminated quoted name {tok} after \"{label}\"")
            name = tok[1:-1]
        else:
            name = tok
        base = name[:-1] if name.endswith("*") else name
        problem = None
        if not base:
            problem = "is empty" if not name else "has nothing before the wildcard"
        elif len(base.encode()) > IFNAME_MAX:
            problem = f"is longer than {IFNAME_MAX} bytes"
        elif "*" in base:
            problem = 'has "*" other than as the last character'
        elif base in (".", ".."):
            problem = 'is "." or ".."'
        elif any(c in "/:\"\\" or c.isspace() for c in base):
            problem = "contains /, :, a quote, a backslash or whitespace"
        if problem:
            raise self.fail(f'interface name "{name}" after "{label}" {problem}')
        return name


def parse_conditions(tokens: list[str] | None, family: int) -> tuple[Match, ...]:
    """Parse one nftables-style conditions list into matches (ANDed, in order).

    ``tokens``: the JSON list of strings from ``conditionsV4`` (``family=4``)
    or ``conditionsV6`` (``family=6``); ``None`` or an empty list gives ``()``.
    iptables-style lists (first token starting with ``-`` or ``!``) are not
    for this function -- :meth:`nlportmap.config.NetConf.parsed_conditions`
    filters them out.

    Raises :class:`~nlportmap.errors.InvalidConfig` (code 7) with a message
    like ``conditionsV4: unsupported token "tcp" (supported: ...)`` for
    anything outside the grammar in the module docstring; ``ValueError`` for
    a ``family`` other than 4 or 6 (programming error).
    """
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    if not tokens:
        return ()
    text = " ".join(tokens)
    if not text.strip():
        return ()
    return _Parser(_tokenize(text), family).parse()
