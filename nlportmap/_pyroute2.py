"""Load pyroute2's netlink *message classes* cheaply, and fix two of them.

We use pyroute2 (pinned ``==0.9.7``) only to encode and decode messages; the
sockets are our own (``nft/netlink.py``).  Importing any pyroute2 submodule
normally runs ``pyroute2/__init__.py`` (the whole library, ~140 ms) and
``pyroute2.netlink.nlsocket`` (asyncio, ssl: ~40 ms).  :func:`load` registers
an unexecuted package object for ``pyroute2`` and placeholder modules for
``nlsocket``/``core`` (whose socket classes we never instantiate) before the
first import, so a request pays ~20 ms instead of ~150 ms.  If pyroute2 was
already imported for real (e.g. in a test process), nothing is stubbed.

Patches (bugs in 0.9.7, see ../shared/reference/netlink-notes.md §11 #6):
``nft_fib.fib_result`` is an enum in the kernel (``enum nft_fib_result``,
include/uapi/linux/netfilter/nf_tables.h), ``nft_fib.fib_flags`` a bitmask.
"""
from __future__ import annotations

import importlib.util
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import ClassVar

_loaded = False


def _stub(name: str, *classes: str) -> None:
    if name in sys.modules:
        return
    m = types.ModuleType(name)
    m.__doc__ = "nlportmap placeholder: pyroute2 socket classes are not used"
    for c in classes:
        setattr(m, c, type(c, (), {}))
    sys.modules[name] = m


def load() -> None:
    """Make ``pyroute2.netlink.nfnetlink.nftsocket`` & co importable cheaply. Idempotent."""
    global _loaded
    if _loaded:
        return
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None:  # pragma: no cover - dependency missing
            raise ImportError("pyroute2 is not installed")
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # not executed
        _stub("pyroute2.netlink.nlsocket", "AsyncNetlinkSocket", "NetlinkSocket")
        _stub("pyroute2.netlink.core", "SyncAPI")
    from pyroute2.netlink.nfnetlink import nftsocket as nfts

    class _fib_result(nfts.nft_map_be32):  # type: ignore[misc]  # pyroute2 has no stubs: its classes are Any
        ops: ClassVar[dict[int, str]] = {0: "NFT_FIB_RESULT_UNSPEC", 1: "NFT_FIB_RESULT_OIF",
               2: "NFT_FIB_RESULT_OIFNAME", 3: "NFT_FIB_RESULT_ADDRTYPE"}

    class _be32(nfts.nla):  # type: ignore[misc]  # pyroute2 has no stubs: its classes are Any
        fields: ClassVar[list[tuple[str, str]]] = [("value", ">I")]

    fib = nfts.nft_contains_expr.nft_expr.nft_fib
    fib.fib_result = _fib_result
    fib.fib_flags = _be32
    _loaded = True
