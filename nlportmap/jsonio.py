"""JSON for the cold exec path without ``import json`` (which pulls in ``re``: ~5 ms of a
~5 ms interpreter start).

Both directions use CPython's ``_json`` C accelerator directly, the module that
``json`` itself uses:

* :func:`loads` accepts exactly the documents that msgspec (the decoder of
  record, :mod:`nlportmap.config`) accepts *and* decodes to the same values, or
  raises :class:`Unsupported` -- it never produces an error message of its own.
  The caller then decodes again with msgspec, which reports the error (so there
  is one author of every JSON error text).  Rejected here: syntax errors,
  ``NaN``/``Infinity``, floats out of range, lone surrogate escapes, invalid
  UTF-8, a BOM.  ``tests/property/test_jsonio.py`` proves the agreement.
* :func:`dumps` renders like ``json.dumps(obj, indent=...)`` (ASCII escapes,
  ``", "``/``": "`` separators as ``json`` uses them) for the JSON types; it is
  byte-identical to ``json.dumps`` (same property test).
"""
from __future__ import annotations

import _json

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable
    from typing import ClassVar

__all__ = ["Unsupported", "dumps", "loads"]

_WS = " \t\n\r"


class Unsupported(ValueError):
    """:func:`loads` will not decide this document; decode it with msgspec instead."""


def _no_constant(name: str) -> object:
    raise Unsupported(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):  # msgspec: "Number out of range"
        raise Unsupported(text)
    return value


_INF = float("inf")


class _Context:
    """The attributes ``_json.make_scanner`` reads from its context (json.JSONDecoder's)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_finite_float)
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: ClassVar[dict[str, str]] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # stub wants a JSONDecoder; a duck does


def loads(data: bytes | str) -> object:
    """Decode one JSON document (UTF-8 bytes or text) -> dict/list/str/int/float/bool/None.

    Raises :class:`Unsupported` for anything msgspec would reject or decode
    differently (see module docstring); never another exception for bad input
    except ``RecursionError`` for absurd nesting, which callers treat alike.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if b"\\ud" in data or b"\\uD" in data:  # surrogate escapes: msgspec is stricter
            raise Unsupported("surrogate escape")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise Unsupported("invalid UTF-8") from None
    else:
        text = data
        if "\\ud" in text or "\\uD" in text:
            raise Unsupported("surrogate escape")
        if not text.isascii():
            try:  # a lone surrogate character: msgspec cannot encode the text (UnicodeEncodeError)
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise Unsupported("lone surrogate") from None
    n = len(text)
    i = 0
    while i < n and text[i] in _WS:
        i += 1
    try:
        value, end = _scan(text, i)
    except StopIteration:
        raise Unsupported("syntax") from None
    except (ValueError, SystemError) as err:
        # _json words a syntax error with json.decoder.JSONDecodeError when json.decoder is
        # loaded; CPython 3.11 only looks it up in sys.modules, and without it the scanner
        # returns NULL without an exception (SystemError).  Either way: not ours to word.
        raise Unsupported(str(err)) from None
    while end < n and text[end] in _WS:
        end += 1
    if end != n:
        raise Unsupported("trailing data")
    return value


_esc = _json.encode_basestring_ascii


def _float(v: float) -> str:
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return float.__repr__(v)


def _enc(v: object, out: list[str], pad: str, step: str) -> None:
    if isinstance(v, str):
        out.append(_esc(v))
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(int.__repr__(v))
    elif isinstance(v, float):
        out.append(_float(v))
    elif isinstance(v, dict):
        for k in v:
            if not isinstance(k, str):
                raise TypeError("non-string key")
        _container(((_esc(k) + ": ", item) for k, item in v.items()), bool(v), "{}", out, pad, step)
    elif isinstance(v, (list, tuple)):
        _container((("", item) for item in v), bool(v), "[]", out, pad, step)
    else:
        raise TypeError(f"not JSON: {type(v).__name__}")


def _container(items: Iterable[tuple[str, object]], nonempty: bool, brackets: str, out: list[str],
               pad: str, step: str) -> None:
    """An object or array as json.dumps(indent=...) writes it: ``items`` are (key text or
    "", value); an empty one stays on its line (``{}``/``[]``)."""
    if not nonempty:
        out.append(brackets)
        return
    inner = pad + step
    sep = "\n"
    out.append(brackets[0])
    for prefix, item in items:
        out.append(sep + inner + prefix)
        sep = ",\n"
        _enc(item, out, inner, step)
    out.append("\n" + pad + brackets[1])


def dumps(obj: object, indent: int | None = None, separators: tuple[str, str] = (",", ":")) -> str:
    """``json.dumps(obj, indent=indent)`` for JSON values; with ``indent`` None it is
    ``json.dumps(obj, separators=separators)`` (compact by default).  Anything unusual
    (non-string keys, other types) is handed to the ``json`` module, so the output is
    always ``json``'s."""
    try:
        if indent is None:
            # default=None: the C encoder accepts it (typeshed's stub wants a callable)
            enc = _json.make_encoder(None, None, _esc, None,  # type: ignore[arg-type]
                                     separators[1], separators[0], False, False, True)
            return "".join(enc(obj, 0))
        out: list[str] = []
        _enc(obj, out, "", " " * indent)
        return "".join(out)
    except (TypeError, RecursionError):
        import json
        if indent is None:
            return json.dumps(obj, separators=separators)
        return json.dumps(obj, indent=indent)
