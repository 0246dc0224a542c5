"""The CNI spec versions this plugin speaks, and its answer to ``VERSION``.

Tiny and dependency-free: the exec'd shim answers ``VERSION`` (a runtime's first
call before ADD) from here without loading the request machinery.
"""
from __future__ import annotations

__all__ = ["CURRENT_VERSION", "SUPPORTED_VERSIONS", "version_output"]

#: CNI versions we accept, in upstream's order (reference §1.4, ``version.All``).
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
#: What VERSION reports as ``cniVersion`` (upstream always reports the current spec version).
CURRENT_VERSION = "1.1.0"


def version_output() -> str:
    """The VERSION answer (reference §1.4): compact JSON plus a newline, i.e.
    ``json.dumps({"cniVersion": ..., "supportedVersions": [...]}, separators=(",", ":"))``
    (the versions are plain ASCII, so no escaping is needed)."""
    listed = ",".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion":"{CURRENT_VERSION}","supportedVersions":[{listed}]}}\n'
