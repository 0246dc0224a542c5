"""Helpers that make decoded JSON behave like Go's ``encoding/json`` does for the plugin.

Upstream decodes every object (config, runtimeConfig, port mappings, prevResult)
into Go structs, and Go matches JSON keys to struct fields **case-insensitively**
(``"SNAT"``, ``"hostIp"`` and ``"PortMappings"`` are accepted; reference
portmap-behaviour.md §2.1).  When several keys of one object map to the same
field, Go assigns them in document order, so the **last** one wins; a JSON
``null`` assigned to a field leaves it unset.  These helpers reproduce that on
plain ``dict``s (Python keeps document order for distinct keys).

Folding is :func:`fold`: Unicode simple case folding, character for character, like
Go's ``bytes.EqualFold`` (so the Kelvin sign and the long s match ``k`` and ``s``, but a
ligature such as U+FB01 does not match ``fi``, which ``str.casefold`` would allow).

Pure functions; no imports beyond the standard library.
"""
from __future__ import annotations

TYPE_CHECKING = False  # 'typing' costs ~2 ms of a cold start: annotations only
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Mapping
    from typing import Any

__all__ = ["canonical_keys", "ci_get", "fold", "json_type"]


def fold(key: str) -> str:
    """The folded form used to compare a JSON key with a field name, as Go's decoder does:
    Unicode *simple* case folding, one character for one (``K``/``k``/Kelvin sign ``\u212a``
    match, and ``S``/``s``/long s ``\u017f``), never the full folding of ``str.casefold``,
    which also expands ligatures and ``ß`` (``"\ufb01"`` is not ``"fi"`` for Go)."""
    out = []
    for c in key:
        u = c.upper()
        out.append(u.lower() if len(u) == 1 else c.lower())
    return "".join(out)


def canonical_keys(obj: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Rename the keys of ``obj`` that match one of ``names`` to that canonical spelling.

    ``names``: the field names (JSON spellings) of the target structure.  A key
    matches a name exactly, or failing that case-insensitively.  Keys matching
    no name are dropped (Go ignores unknown keys).  Keys whose value is
    ``None`` (JSON ``null``) are skipped: for Go a null leaves the field at its
    default.  When several keys map to one name the last one in document order
    wins.  Returns a new ``dict``; values are not copied.
    """
    exact = set(names)
    folded = {fold(n): n for n in exact}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in exact else folded.get(fold(key))
        if name is None or value is None:
            continue
        out[name] = value
    return out


def ci_get(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Value of field ``name`` in ``obj``, matched like Go (case-insensitive, last non-null wins)."""
    want = fold(name)
    value = default
    for key, v in obj.items():
        if v is not None and (key == name or fold(key) == want):
            value = v
    return value


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages (``string``, ``number``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
