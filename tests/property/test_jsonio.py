"""``nlportmap.jsonio`` against msgspec (loads) and ``json`` (dumps).

* ``loads`` accepts a document only if msgspec accepts it, and then returns the same
  value with the same types; for everything else it raises ``Unsupported`` (or
  ``RecursionError`` for absurd nesting), never anything else -- so the exec'd plugin's
  JSON errors are always msgspec's.
* ``dumps(x, indent=N)`` is ``json.dumps(x, indent=N)``; ``dumps(x)`` and
  ``dumps(x, separators=...)`` are ``json.dumps(x, separators=...)``, byte for byte.
* In a ``python -I -S`` process (the launcher's), ``json.decoder`` is not loaded and
  ``_json`` reports a syntax error as ``SystemError``: ``loads`` must still say
  ``Unsupported`` and must not import ``json``.
"""
from __future__ import annotations

import json
import marshal
import math
import os
import subprocess
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nlportmap import jsonio

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def typed(v) -> list:
    """A flat, type-revealing rendering of ``v`` (iterative: documents nest 900 deep);
    ``-0.0`` != ``0.0``, ``True`` != ``1``, and dict key order counts."""
    out: list = []
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            out.append(("dict", len(x)))
            for k, item in reversed(list(x.items())):
                stack.append(item)
                stack.append(("key", k))
        elif isinstance(x, list):
            out.append(("list", len(x)))
            stack.extend(reversed(x))
        elif isinstance(x, tuple) and x[:1] == ("key",):
            out.append(x)
        elif isinstance(x, float):
            out.append(("float", repr(x)))
        else:
            out.append((type(x).__name__, x))
    return out


scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
           | st.sampled_from(("", "\u2028", "\x7f", "é", "😀", "\\u0041", "\"", "/", "\x00", "\ud800x")))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=25)


def check_loads(doc):
    """The loads contract for one document (bytes or str)."""
    try:
        ours = jsonio.loads(doc)
    except (jsonio.Unsupported, RecursionError):
        return "unsupported"
    theirs = msgspec.json.decode(doc)  # must not raise: loads accepted it
    assert typed(ours) == typed(theirs), doc
    return "accepted"


def renderings(v):
    yield json.dumps(v)
    yield json.dumps(v, ensure_ascii=False)
    yield json.dumps(v, indent=2, ensure_ascii=False)
    yield json.dumps(v, separators=(",", ":"))


@settings(max_examples=600, **SETTINGS)
@given(v=json_values)
def test_loads_agrees_with_msgspec_on_json_documents(v):
    for text in renderings(v):
        for doc in (text, text.encode("utf-8", "surrogatepass")):
            check_loads(doc)


@settings(max_examples=300, **SETTINGS)
@given(v=json_values.filter(lambda v: "\\ud" not in json.dumps(v, ensure_ascii=False).lower()))
def test_loads_accepts_what_it_should(v):
    """Not a correctness property (Unsupported is always safe) but the fast path's reason
    to exist: documents without surrogate escapes are decoded here, not by msgspec."""
    text = json.dumps(v, ensure_ascii=False)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    assert check_loads(text.encode()) == "accepted"


def damaged(text: bytes):
    return st.tuples(st.integers(0, max(len(text) - 1, 0)), st.integers(0, 3), st.binary(min_size=1, max_size=3)).map(
        lambda t: (text[:t[0]], text[:t[0]] + text[t[0] + 1:], text[:t[0]] + t[2] + text[t[0] + 1:],
                   text[:t[0]] + t[2] + text[t[0]:])[t[1]])


SPECIAL = [b"", b" ", b"null", b"nul", b"NaN", b"-Infinity", b"Infinity", b"[NaN]", b"1e400", b"-1e400", b"1e-400",
           b"1.7976931348623157e308", b"1.7976931348623159e308", b"-0", b"-0.0", b"0e0", b"00", b"01", b"-", b"1.",
           b".1", b"+1", b"0x1", b"1_000", b"123456789012345678901234567890", b"-9223372036854775809",
           b'"\\ud800"', b'"\\uDC00"', b'"\\ud83d\\ude00"', b'"\\u00e9"', b'"\xed\xa0\x80"', b'"\xc3\xa9"', b'"\xff"',
           b'"\xc0\xaf"', b'"\x01"', b'"\x7f"', b'"\\x41"', b'"\\\'"', b"'a'", b"[1,]", b"{,}", b'{"a":1,}', b'{"a" 1}',
           b'{"a":1 "b":2}', b'{"a":1}x', b'{"a":1} {}', b"\xef\xbb\xbf{}", b"{}\x00", b"\x0c{}", b"\x0b1", b"\xa01",
           b"[" * 5000, b"[" * 900 + b"]" * 900, b"[" * 3000 + b"]" * 3000, b'{"a":1,"a":2,"b":3,"A":4}',
           b'"\\u0000"', b'"\\/"', b"true false", b"[true,false,null]", b"\t\n\r 1 \t\n\r"]


@pytest.mark.parametrize("doc", SPECIAL, ids=range(len(SPECIAL)))
def test_loads_contract_on_special_documents(doc):
    check_loads(doc)
    if b"\x00" not in doc:
        try:
            text = doc.decode("utf-8")
        except UnicodeDecodeError:
            return
        check_loads(text)


@settings(max_examples=800, **SETTINGS)
@given(data=st.data(), v=json_values)
@example(data=None, v=None)
def test_loads_contract_on_damaged_and_random_bytes(data, v):
    if data is None:
        return
    text = json.dumps(v, ensure_ascii=data.draw(st.booleans())).encode("utf-8", "surrogatepass")
    doc = data.draw(damaged(text) | st.binary(max_size=40) | st.sampled_from(SPECIAL))
    check_loads(doc)


# ------------------------------------------------------------------ dumps

dump_values = st.recursive(
    scalars | st.sampled_from((math.nan, math.inf, -math.inf, -0.0, 1e16, 1e-7, 2 ** 64)),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    | st.dictionaries(st.integers(-3, 3) | st.booleans() | st.none() | st.floats(allow_nan=False), inner, max_size=2),
    max_leaves=25)


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as err:
        return ("raised", type(err).__name__)


@settings(max_examples=800, **SETTINGS)
@given(v=dump_values, indent=st.sampled_from((4, 4, 2, 0)))
def test_dumps_is_json_dumps(v, indent):
    assert outcome(lambda: jsonio.dumps(v, indent=indent)) == outcome(lambda: json.dumps(v, indent=indent))
    assert outcome(lambda: jsonio.dumps(v)) == outcome(lambda: json.dumps(v, separators=(",", ":")))
    for seps in ((", ", ": "), (",", ": "), (", ", ":")):
        assert outcome(lambda s=seps: jsonio.dumps(v, separators=s)) == outcome(lambda s=seps: json.dumps(v, separators=s))


class Odd:
    pass


@pytest.mark.parametrize("v", [Odd(), {"a": Odd()}, [1, {2: 3}], {(1, 2): 3}, {"a": {1.5: [None]}}, b"x",
                               {"a": set()}, "x" * 3, [[[[[]]]]], {}, [], {"": ""}],
                         ids=range(12))
def test_dumps_odd_values_fall_back_to_json(v):
    for indent in (None, 4):
        kw = {} if indent is None else {"indent": indent}
        ref = (lambda i=indent: json.dumps(v, indent=i)) if indent else (lambda: json.dumps(v, separators=(",", ":")))
        assert outcome(lambda k=kw: jsonio.dumps(v, **k)) == outcome(ref)


def test_dumps_circular_reference_raises_like_json():
    a: list = []
    a.append(a)
    assert outcome(lambda: jsonio.dumps(a, indent=4))[0] == "raised"
    assert outcome(lambda: jsonio.dumps(a))[0] == "raised"


# ------------------------------------------------------------------ the launcher's interpreter

CHILD = r"""
import marshal, sys
sys.path.insert(0, sys.argv[1])
from nlportmap import jsonio
assert "json" not in sys.modules and "json.decoder" not in sys.modules, sorted(sys.modules)
out = []
for doc in marshal.loads(sys.stdin.buffer.read()):
    try:
        out.append(("ok", jsonio.loads(doc)))
    except jsonio.Unsupported:
        out.append(("unsupported",))
    except RecursionError:
        out.append(("recursion",))
    except BaseException as err:
        out.append(("other", type(err).__name__, str(err)))
assert "json" not in sys.modules and "json.decoder" not in sys.modules, "loads imported json"
sys.stdout.buffer.write(marshal.dumps(out))
"""


def _child(docs: list) -> list:
    cp = subprocess.run([sys.executable, "-I", "-S", "-c", CHILD, ROOT], input=marshal.dumps(docs),
                        capture_output=True, timeout=60, check=False)
    assert cp.returncode == 0, cp.stderr.decode()
    return marshal.loads(cp.stdout)


def _check_child(docs: list) -> None:
    for doc, got in zip(docs, _child(docs), strict=True):
        assert got[0] in ("ok", "unsupported", "recursion"), (doc, got)
        if got[0] == "ok":
            assert typed(got[1]) == typed(msgspec.json.decode(doc)), doc
        else:
            with pytest.raises((msgspec.DecodeError, RecursionError, UnicodeDecodeError)) if _msgspec_rejects(doc) \
                    else _nothing():
                msgspec.json.decode(doc)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _msgspec_rejects(doc) -> bool:
    try:
        msgspec.json.decode(doc)
    except (msgspec.DecodeError, RecursionError):
        return True
    return False


def test_without_json_decoder_syntax_errors_are_unsupported():
    """``python -I -S`` (the launcher): ``_json`` raises SystemError for a syntax error when
    ``json.decoder`` is not imported; ``loads`` turns it into ``Unsupported``."""
    docs = [doc for doc in SPECIAL if len(doc) < 100] + [b'{"a": [1, 2, {"b": null}]}', b'{"a": 1', b"[1 2]",
                                                         b'{"cniVersion": "1.0.0", "name": "n"}', b"tru", b'"abc']
    _check_child(docs)
    got = dict(zip(docs, _child(docs), strict=False))
    assert got[b'{"a": 1'] == ("unsupported",)
    assert got[b"[1 2]"] == ("unsupported",)
    assert got[b'{"cniVersion": "1.0.0", "name": "n"}'] == ("ok", {"cniVersion": "1.0.0", "name": "n"})


@settings(max_examples=5, **SETTINGS)
@given(vs=st.lists(json_values, min_size=20, max_size=40), data=st.data())
def test_without_json_decoder_generated_documents(vs, data):
    docs = []
    for v in vs:
        text = json.dumps(v, ensure_ascii=data.draw(st.booleans())).encode("utf-8", "surrogatepass")
        docs.append(text)
        docs.append(data.draw(damaged(text)))
    _check_child(docs)
